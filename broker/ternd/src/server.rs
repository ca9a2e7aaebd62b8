//! The client listener: admission of connections, then one task per
//! connection reading frames, dispatching requests, and a writer task
//! sending responses as they complete.
//!
//! Requests on one connection are pipelined: up to [`IN_FLIGHT_PER_CONNECTION_MAX`]
//! are processed at once and answered in completion order (clients match
//! answers by correlation id). Produce batches are queued on their
//! partitions *before* the next frame is read, so pipelined produces to one
//! partition keep their order.
//!
//! Every resource a client can hold here is bounded by a named limit of
//! [`ConnectionLimits`]: connections in all and per IP address (over either,
//! the connection's first request is answered `too_many_connections` and the
//! connection closed), the time to deliver the first whole request and the
//! time a connection may sit idle (then it is closed), and the bytes of
//! requests read but not yet answered over all connections (at the limit,
//! connections stop reading: backpressure). A response is size-checked
//! before it is queued: one over the frame limit is replaced by a
//! `limit_exceeded` error, so the writer never meets a frame it cannot send;
//! if the writer dies anyway (a socket error), the connection is closed
//! rather than left reading requests nobody will hear answered.
//!
//! Garbage on the socket (a frame over the size limit, a header that cannot
//! be read) closes that connection only; a readable header with a bad body
//! gets an error response and the connection stays open.
//!
//! Authentication: `SaslHandshake` and `SaslAuthenticate` are carried
//! through the connection's exchange ([`crate::auth`]) one at a time, before
//! the next frame is read, so a request pipelined behind the last SASL
//! message already sees the proven principal. A failed exchange is answered
//! `authentication_failed` and the connection closed. With `auth required`,
//! any other request of a connection without a principal (from SCRAM or a
//! TLS client certificate) is answered `authentication_required`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tern_protocol::{
    ApiKey, ErrorCode, ErrorReply, FrameCodec, Request, RequestFrame, ResponseFrame,
    FRAME_BYTES_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::auth::SaslState;
use crate::broker::{finish_produce, Broker, Failure};
use crate::config::ConnectionLimits;
use crate::metrics::Metrics;
use crate::session::Session;

/// Requests processed concurrently per connection before reading pauses.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 256;
/// Refused connections being answered at once; beyond, a refused
/// connection is closed without an answer (a flood must not cost more).
pub const REFUSALS_IN_FLIGHT_MAX: usize = 64;
/// Longest a refused connection is kept to answer its first request.
pub const REFUSAL_MS_MAX: u64 = 2_000;

/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Tern's own (`tern-protocol`).
    Native,
    /// Kafka's ([`crate::kafka`]).
    Kafka,
}

/// Accepts connections until `shutdown` fires; with `tls`, each is a TLS
/// connection (a client certificate, if presented, names the principal).
/// Both protocols share the admission limits' logic (each listener counts
/// its own connections) and the TLS set-up.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<tern_tls::TlsContext>>,
    protocol: Protocol,
    shutdown: CancellationToken,
) {
    let limits = broker.config().connection_limits.clone();
    let admission = Arc::new(Admission::new(&limits));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let request_bytes = Arc::new(Semaphore::new(limits.request_bytes_in_flight_max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                broker
                    .metrics()
                    .limit_refusals
                    .with_label_values(&[refusal.limit])
                    .inc();
                debug!(%peer, limit = refusal.limit, "refusing connection");
                if protocol == Protocol::Kafka {
                    // Kafka has no connection-level refusal to send.
                    drop(stream);
                    continue;
                }
                match refusals.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let answer = async {
                                match &tls {
                                    None => refuse(stream, refusal.message).await,
                                    Some(tls) => match accept_tls(tls, stream).await {
                                        Some((stream, _)) => refuse(stream, refusal.message).await,
                                        None => Ok(()),
                                    },
                                }
                            };
                            let _ =
                                tokio::time::timeout(Duration::from_millis(REFUSAL_MS_MAX), answer)
                                    .await;
                        });
                    }
                    Err(_) => drop(stream),
                }
                continue;
            }
        };
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let request_bytes = request_bytes.clone();
        let limits = limits.clone();
        let span = tracing::info_span!(
            "conn",
            node = broker.config().node_id,
            %peer,
            principal = tracing::field::Empty
        );
        let tls = tls.clone();
        tokio::spawn(
            async move {
                let _ticket = ticket;
                broker.metrics().connections.inc();
                let session = Arc::new(Session::new(peer));
                match tls {
                    None => {
                        dispatch(
                            protocol,
                            &broker,
                            stream,
                            session,
                            &limits,
                            request_bytes,
                            shutdown,
                        )
                        .await
                    }
                    Some(tls) => {
                        if let Some((stream, principal)) = accept_tls(&tls, stream).await {
                            if let Some(principal) = principal {
                                session.set_principal(principal.into());
                            }
                            dispatch(
                                protocol,
                                &broker,
                                stream,
                                session,
                                &limits,
                                request_bytes,
                                shutdown,
                            )
                            .await;
                        }
                    }
                }
                broker.metrics().connections.dec();
            }
            .instrument(span),
        );
    }
    info!("listener stopped");
}

async fn dispatch<S>(
    protocol: Protocol,
    broker: &Arc<Broker>,
    stream: S,
    session: Arc<Session>,
    limits: &ConnectionLimits,
    request_bytes: Arc<Semaphore>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    match protocol {
        Protocol::Native => {
            handle_connection(broker, stream, session, limits, request_bytes, shutdown).await
        }
        Protocol::Kafka => {
            crate::kafka::handle_connection(
                broker,
                stream,
                session,
                limits,
                request_bytes,
                shutdown,
            )
            .await
        }
    }
}

/// Counts open connections in all and per IP address.
struct Admission {
    connections_max: usize,
    per_ip_max: usize,
    open: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection's place in the counts, given back on drop.
#[derive(Debug)]
struct Ticket {
    ip: IpAddr,
    open: Arc<Mutex<Counts>>,
}

/// Why a connection was refused: the limit's name and a message for the
/// client.
#[derive(Debug)]
struct Refusal {
    limit: &'static str,
    message: String,
}

impl Admission {
    fn new(limits: &ConnectionLimits) -> Admission {
        Admission {
            connections_max: limits.connections_max,
            per_ip_max: limits.connections_per_ip_max,
            open: Arc::new(Mutex::new(Counts::default())),
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut open = self.open.lock().expect("admission lock");
        if open.total >= self.connections_max {
            return Err(Refusal {
                limit: "connections_max",
                message: format!(
                    "the broker has {} client connections open, its connections_max; retry later",
                    open.total
                ),
            });
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_ip_max {
            return Err(Refusal {
                limit: "connections_per_ip_max",
                message: format!(
                    "{from_ip} connections are open from {ip}, the broker's connections_per_ip_max; close some or retry later"
                ),
            });
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_default() += 1;
        Ok(Ticket {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("admission lock");
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Answers a refused connection's first request with `TooManyConnections`
/// and closes it. Only the frame's length and header are read: a refused
/// client costs a few bytes of memory whatever it sends.
async fn refuse<S>(mut stream: S, message: String) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Frame length (big-endian), then version, api, correlation id.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let api = u16::from_le_bytes([head[6], head[7]]);
    let correlation_id = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let reply = encode(&ResponseFrame {
        correlation_id,
        result: Err(ErrorReply {
            api,
            code: ErrorCode::TooManyConnections,
            message,
        }),
    });
    stream
        .write_all(&(reply.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(&reply).await?;
    stream.shutdown().await?;
    // Closing with unread bytes would reset the connection, and the client
    // could lose the answer: read until it closes (bounded by the caller).
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// A request's share of the in-flight byte budget, given back when its
/// answer is queued.
struct BytesInFlight {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl Drop for BytesInFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// The TLS handshake of a client connection (bounded in time); records the
/// principal its certificate names, if any, on the connection's span.
async fn accept_tls(
    tls: &tern_tls::TlsContext,
    stream: TcpStream,
) -> Option<(tern_tls::server::TlsStream<TcpStream>, Option<String>)> {
    let stream = match tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
        tls.client_acceptor().accept(stream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(target: "tern::security", error = %e, "closing connection: TLS handshake failed");
            return None;
        }
        Err(_) => {
            warn!("closing connection: TLS handshake timed out");
            return None;
        }
    };
    let principal = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tern_tls::principal_of);
    if let Some(principal) = &principal {
        tracing::Span::current().record("principal", principal.as_str());
        info!(target: "tern::security", %principal, "client authenticated by certificate");
    }
    Some((stream, principal))
}

async fn handle_connection<S>(
    broker: &Arc<Broker>,
    stream: S,
    session: Arc<Session>,
    limits: &ConnectionLimits,
    request_bytes: Arc<Semaphore>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let peer = session.peer();
    let opened = tokio::time::Instant::now();
    let (read_half, write_half) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read_half, FrameCodec::default());
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(IN_FLIGHT_PER_CONNECTION_MAX);
    let metrics = broker.metrics().clone();
    // Cancelled when the writer stops: reading on would commit requests
    // whose answers can no longer be sent.
    let writer_gone = CancellationToken::new();
    // When the writer last sent something (ms since `opened`): a connection
    // receiving answers is not idle.
    let last_write_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let writer_gone = writer_gone.clone();
        let last_write_ms = last_write_ms.clone();
        tokio::spawn(async move {
            let _gone = writer_gone.drop_guard();
            let mut sink = FramedWrite::new(write_half, FrameCodec::default());
            while let Some(first) = out_rx.recv().await {
                metrics.network_out_bytes.inc_by(first.len() as u64 + 4);
                if let Err(e) = sink.feed(first).await {
                    debug!(error = %e, "writer stopped");
                    return;
                }
                // Coalesce whatever else is ready into one write syscall.
                while let Ok(more) = out_rx.try_recv() {
                    metrics.network_out_bytes.inc_by(more.len() as u64 + 4);
                    if let Err(e) = sink.feed(more).await {
                        debug!(error = %e, "writer stopped");
                        return;
                    }
                }
                if let Err(e) = sink.flush().await {
                    debug!(error = %e, "writer stopped");
                    return;
                }
                last_write_ms.store(
                    opened.elapsed().as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        })
    };
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION_MAX));
    let handshake = Duration::from_millis(limits.handshake_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut first_request = true;
    let mut last_read = opened;
    let mut sasl = SaslState::default();
    // Idle means: nothing read and nothing written for `idle`.
    let idle_deadline = |last_read: tokio::time::Instant| {
        let wrote = opened
            + Duration::from_millis(last_write_ms.load(std::sync::atomic::Ordering::Relaxed));
        last_read.max(wrote) + idle
    };
    loop {
        let deadline = if first_request {
            opened + handshake
        } else {
            idle_deadline(last_read)
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => {
                debug!(%peer, "closing connection: its writer stopped");
                break;
            }
            n = frames.next() => n,
            _ = tokio::time::sleep_until(deadline) => {
                if first_request {
                    broker.metrics().limit_refusals.with_label_values(&["handshake_timeout_ms"]).inc();
                    debug!(%peer, "closing connection: no whole request within handshake_timeout_ms");
                    break;
                }
                let now = tokio::time::Instant::now();
                let busy = in_flight.available_permits() < IN_FLIGHT_PER_CONNECTION_MAX;
                if busy {
                    // Waiting for our answers is not idleness.
                    last_read = now;
                    continue;
                }
                if idle_deadline(last_read) > now {
                    continue; // an answer went out meanwhile
                }
                broker.metrics().limit_refusals.with_label_values(&["idle_timeout_ms"]).inc();
                debug!(%peer, "closing connection: idle for idle_timeout_ms");
                break;
            }
        };
        let body = match next {
            None => break,
            Some(Ok(body)) => body,
            Some(Err(e)) => {
                broker.metrics().protocol_violations.inc();
                warn!(%peer, error = %e, "closing connection: bad framing");
                break;
            }
        };
        first_request = false;
        last_read = tokio::time::Instant::now();
        broker
            .metrics()
            .network_in_bytes
            .inc_by(body.len() as u64 + 4);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        // The frame is read; holding it until answered counts against the
        // broker-wide budget, and waiting for room stops this connection.
        let bytes = body.len().max(1) as u32;
        let budget = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = request_bytes.clone().acquire_many_owned(bytes) => p,
        };
        let Ok(budget) = budget else { break };
        broker.metrics().request_bytes_in_flight.add(bytes as i64);
        let held = BytesInFlight {
            _permit: budget,
            bytes: bytes as i64,
            gauge: broker.metrics().request_bytes_in_flight.clone(),
        };
        let started = Instant::now();
        let frame = match RequestFrame::decode(body) {
            Ok(f) => f,
            Err(bad) => {
                let Some(correlation_id) = bad.correlation_id else {
                    broker.metrics().protocol_violations.inc();
                    warn!(%peer, error = %bad.error, "closing connection: unreadable header");
                    break;
                };
                let (api_name, api_raw, code) = match bad.api {
                    Some(api) => (api.name(), api as u16, ErrorCode::InvalidRequest),
                    None => ("unknown", u16::MAX, ErrorCode::UnsupportedVersion),
                };
                broker
                    .metrics()
                    .request_errors
                    .with_label_values(&[api_name, code.name()])
                    .inc();
                debug!(%peer, error = %bad.error, "bad request");
                let reply = ResponseFrame {
                    correlation_id,
                    result: Err(ErrorReply {
                        api: api_raw,
                        code,
                        message: bad.error.to_string(),
                    }),
                };
                if out_tx.send(encode(&reply)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let api = frame.request.api_key();
        broker
            .metrics()
            .requests
            .with_label_values(&[api.name()])
            .inc();
        let correlation_id = frame.correlation_id;
        if matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
            let span = tracing::debug_span!("sasl", api = api.name(), correlation_id);
            let outcome = broker
                .sasl_step(&session, &mut sasl, frame.request)
                .instrument(span)
                .await;
            if let (Ok(_), Some(principal)) = (&outcome.result, session.principal()) {
                tracing::Span::current().record("principal", &*principal);
            }
            respond(
                broker,
                api,
                started,
                correlation_id,
                outcome.result,
                &out_tx,
            )
            .await;
            drop((permit, held));
            if outcome.close {
                break;
            }
            continue;
        }
        if broker.config().auth_required && session.principal().is_none() {
            let refused = Failure::new(
                ErrorCode::AuthenticationRequired,
                format!(
                    "this broker requires authentication: authenticate (SCRAM-SHA-256 with \
                     SaslHandshake, or a TLS client certificate) before {}",
                    api.name()
                ),
            );
            respond(broker, api, started, correlation_id, Err(refused), &out_tx).await;
            drop((permit, held));
            continue;
        }
        if let Err(revoked) = broker.revalidate(&session) {
            respond(broker, api, started, correlation_id, Err(revoked), &out_tx).await;
            break;
        }
        let out = out_tx.clone();
        let b = broker.clone();
        let session = session.clone();
        match frame.request {
            Request::Produce {
                partitions,
                timeout_ms,
                ..
            } => {
                let span =
                    tracing::debug_span!("produce", correlation_id, partitions = partitions.len());
                // Enqueue now, in arrival order; wait for durability elsewhere.
                let pending = broker
                    .enqueue_produce(&session, partitions)
                    .instrument(span.clone())
                    .await;
                tokio::spawn(
                    async move {
                        let response = finish_produce(pending, timeout_ms, b.metrics()).await;
                        respond(&b, api, started, correlation_id, Ok(response), &out).await;
                        drop((permit, held));
                    }
                    .instrument(span),
                );
            }
            request => {
                let span = tracing::debug_span!("request", api = api.name(), correlation_id);
                tokio::spawn(
                    async move {
                        let result = b.handle(&session, request).await;
                        respond(&b, api, started, correlation_id, result, &out).await;
                        drop((permit, held));
                    }
                    .instrument(span),
                );
            }
        }
    }
    drop(out_tx);
    // Answers already computed still go out; a dead or shut-down writer
    // does not hold the connection open.
    let _ = writer.await;
    debug!(%peer, "connection closed");
}

async fn respond(
    broker: &Broker,
    api: ApiKey,
    started: Instant,
    correlation_id: u32,
    result: Result<tern_protocol::Response, crate::broker::Failure>,
    out: &mpsc::Sender<Bytes>,
) {
    broker
        .metrics()
        .request_seconds
        .with_label_values(&[api.name()])
        .observe(started.elapsed().as_secs_f64());
    let result = result.map_err(|f| {
        broker
            .metrics()
            .request_errors
            .with_label_values(&[api.name(), f.code.name()])
            .inc();
        ErrorReply {
            api: api as u16,
            code: f.code,
            message: f.message,
        }
    });
    let frame = encode_within_limit(
        broker.metrics(),
        api,
        ResponseFrame {
            correlation_id,
            result,
        },
    );
    let _ = out.send(frame).await;
}

/// Encodes a response, or — when it would not fit in a frame — a
/// `LimitExceeded` error naming the frame limit in its place: the writer
/// must never be handed a frame the codec refuses.
fn encode_within_limit(metrics: &Metrics, api: ApiKey, frame: ResponseFrame) -> Bytes {
    let encoded = encode(&frame);
    if encoded.len() <= FRAME_BYTES_MAX {
        return encoded;
    }
    metrics
        .limit_refusals
        .with_label_values(&["frame_bytes_max"])
        .inc();
    metrics
        .request_errors
        .with_label_values(&[api.name(), ErrorCode::LimitExceeded.name()])
        .inc();
    warn!(
        api = api.name(),
        bytes = encoded.len(),
        "response over the frame limit; answered limit_exceeded instead"
    );
    encode(&ResponseFrame {
        correlation_id: frame.correlation_id,
        result: Err(ErrorReply {
            api: api as u16,
            code: ErrorCode::LimitExceeded,
            message: format!(
                "the {} response would be {} bytes, over the frame limit of {FRAME_BYTES_MAX} bytes (frame_bytes_max); ask for less, e.g. fewer topics",
                api.name(),
                encoded.len()
            ),
        }),
    })
}

fn encode(frame: &ResponseFrame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::api::{TopicConfig, TopicInfo};
    use tern_protocol::Response;

    fn limits(total: usize, per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            connections_max: total,
            connections_per_ip_max: per_ip,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn admission_caps_each_ip_and_the_total_and_frees_on_drop() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let admission = Admission::new(&limits(3, 2));
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        let refused = admission.admit(a).unwrap_err();
        assert_eq!(refused.limit, "connections_per_ip_max");
        assert!(refused.message.contains("10.0.0.1"), "{}", refused.message);
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err().limit, "connections_max");
        drop(a1);
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(a).unwrap_err().limit, "connections_max");
    }

    #[test]
    fn a_response_over_the_frame_limit_becomes_an_error_naming_the_limit() {
        let metrics = Metrics::new();
        let topic = |i: usize| TopicInfo {
            error: ErrorCode::UnknownTopicOrPartition,
            name: format!("{i:0>249}"),
            config: TopicConfig {
                partitions: 0,
                replication_factor: 0,
                retention_ms: -1,
                retention_bytes: -1,
            },
            partitions: vec![],
        };
        let frame = |n: usize| ResponseFrame {
            correlation_id: 7,
            result: Ok(Response::Metadata {
                brokers: vec![],
                controller: 1,
                topics: (0..n).map(topic).collect(),
            }),
        };
        let small = encode_within_limit(&metrics, ApiKey::Metadata, frame(10));
        assert!(ResponseFrame::decode(small).unwrap().result.is_ok());
        let big = encode_within_limit(&metrics, ApiKey::Metadata, frame(70_000));
        assert!(big.len() < 1024);
        let back = ResponseFrame::decode(big).unwrap();
        assert_eq!(back.correlation_id, 7);
        let e = back.result.unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(e.message.contains("frame_bytes_max"), "{}", e.message);
        assert_eq!(
            metrics
                .limit_refusals
                .with_label_values(&["frame_bytes_max"])
                .get(),
            1
        );
    }
}

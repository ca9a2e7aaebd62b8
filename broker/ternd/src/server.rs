//! The client listener: one task per connection reading frames, dispatching
//! requests, and a writer task sending responses as they complete.
//!
//! Requests on one connection are pipelined: up to [`IN_FLIGHT_PER_CONNECTION_MAX`]
//! are processed at once and answered in completion order (clients match
//! answers by correlation id). Produce batches are queued on their
//! partitions *before* the next frame is read, so pipelined produces to one
//! partition keep their order.
//!
//! Garbage on the socket (a frame over the size limit, a header that cannot
//! be read) closes that connection only; a readable header with a bad body
//! gets an error response and the connection stays open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tern_protocol::{
    ApiKey, ErrorCode, ErrorReply, FrameCodec, Request, RequestFrame, ResponseFrame,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::broker::{finish_produce, Broker};

/// Requests processed concurrently per connection before reading pauses.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 256;
/// Most simultaneous client connections.
pub const CONNECTIONS_MAX: usize = 10_000;

/// Longest a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until `shutdown` fires; with `tls`, each is a TLS
/// connection (a client certificate, if presented, names the principal).
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<tern_tls::TlsContext>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "refusing connection: {CONNECTIONS_MAX} connections open");
            continue;
        };
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!(
            "conn",
            node = broker.config().node_id,
            %peer,
            principal = tracing::field::Empty
        );
        let tls = tls.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                broker.metrics().connections.inc();
                match tls {
                    None => handle_connection(&broker, stream, peer, shutdown).await,
                    Some(tls) => {
                        if let Some(stream) = accept_tls(&tls, stream).await {
                            handle_connection(&broker, stream, peer, shutdown).await;
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

/// The TLS handshake of a client connection (bounded in time); records the
/// principal its certificate names, if any, on the connection's span.
async fn accept_tls(
    tls: &tern_tls::TlsContext,
    stream: TcpStream,
) -> Option<tern_tls::server::TlsStream<TcpStream>> {
    let stream =
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.client_acceptor().accept(stream))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(error = %e, "closing connection: TLS handshake failed");
                return None;
            }
            Err(_) => {
                warn!("closing connection: TLS handshake timed out");
                return None;
            }
        };
    if let Some(principal) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tern_tls::principal_of)
    {
        tracing::Span::current().record("principal", principal.as_str());
    }
    Some(stream)
}

async fn handle_connection<S>(
    broker: &Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read_half, FrameCodec::default());
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(IN_FLIGHT_PER_CONNECTION_MAX);
    let metrics = broker.metrics().clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(write_half, FrameCodec::default());
        while let Some(first) = out_rx.recv().await {
            metrics.network_out_bytes.inc_by(first.len() as u64 + 4);
            if sink.feed(first).await.is_err() {
                return;
            }
            // Coalesce whatever else is ready into one write syscall.
            while let Ok(more) = out_rx.try_recv() {
                metrics.network_out_bytes.inc_by(more.len() as u64 + 4);
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION_MAX));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = frames.next() => n,
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
        broker
            .metrics()
            .network_in_bytes
            .inc_by(body.len() as u64 + 4);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
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
        let out = out_tx.clone();
        let b = broker.clone();
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
                    .enqueue_produce(partitions)
                    .instrument(span.clone())
                    .await;
                tokio::spawn(
                    async move {
                        let response = finish_produce(pending, timeout_ms, b.metrics()).await;
                        respond(&b, api, started, correlation_id, Ok(response), &out).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            request => {
                let span = tracing::debug_span!("request", api = api.name(), correlation_id);
                tokio::spawn(
                    async move {
                        let result = b.handle(request).await;
                        respond(&b, api, started, correlation_id, result, &out).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
    drop(out_tx);
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
    let _ = out
        .send(encode(&ResponseFrame {
            correlation_id,
            result,
        }))
        .await;
}

fn encode(frame: &ResponseFrame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

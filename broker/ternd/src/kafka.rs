//! The Kafka listener: Kafka clients (librdkafka, the Java client,
//! kafka-python, kcat) produce to and consume from Tern unchanged.
//!
//! **What it owns.** One task per Kafka connection: frames in, each request
//! translated into Tern's own request and answered by the same
//! [`Broker::handle`] the native listener uses (so authorization, limits,
//! metrics and forwarding behave the same), the answer translated back.
//! Responses leave in request order, as Kafka requires; produce batches are
//! queued on their partitions before the next frame is read, so pipelined
//! produces keep their order. Message formats come from `tern-kafka`
//! (`kafka-protocol`); record batches are converted there.
//!
//! **Must never** decide anything the native path decides differently: a
//! Kafka request is a Tern request in another encoding. The only
//! Kafka-specific state is per connection (its SASL exchange).
//!
//! Malformed, truncated or unsupported requests close the connection (as
//! Kafka brokers do) and count in `tern_kafka_protocol_violations_total`;
//! an `ApiVersions` of an unknown version is answered at version 0 with
//! `UNSUPPORTED_VERSION` and the versions Tern has, so clients negotiate.

mod groups;
mod handlers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tern_kafka::frame::{decode_request, encode_response, FrameError, KAFKA_REQUEST_BYTES_MAX};
use tern_kafka::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::auth::SaslState;
use crate::broker::Broker;
use crate::config::ConnectionLimits;
use crate::session::Session;

/// Requests of one Kafka connection being processed or awaiting their
/// turn to be answered; beyond, the connection stops reading.
pub const KAFKA_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;

/// What a request's task hands the writer: a response frame, or nothing
/// (a produce with `acks=0` is not answered).
type Answer = oneshot::Receiver<Option<Bytes>>;

/// Serves one Kafka connection until it closes, misbehaves or `shutdown`.
pub async fn handle_connection<S>(
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
    let codec = || {
        LengthDelimitedCodec::builder()
            .max_frame_length(KAFKA_REQUEST_BYTES_MAX)
            .new_codec()
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read_half, codec());
    let (answers_tx, mut answers_rx) = mpsc::channel::<Answer>(KAFKA_IN_FLIGHT_PER_CONNECTION_MAX);
    let metrics = broker.metrics().clone();
    let writer_gone = CancellationToken::new();
    let writer = {
        let writer_gone = writer_gone.clone();
        tokio::spawn(async move {
            let _gone = writer_gone.drop_guard();
            let mut sink = FramedWrite::new(write_half, codec());
            while let Some(answer) = answers_rx.recv().await {
                let Ok(frame) = answer.await else { return };
                let Some(frame) = frame else { continue };
                metrics.network_out_bytes.inc_by(frame.len() as u64 + 4);
                if let Err(e) = sink.send(frame).await {
                    debug!(error = %e, "Kafka writer stopped");
                    return;
                }
            }
        })
    };
    let handshake = Duration::from_millis(limits.handshake_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut first = true;
    let mut sasl = SaslState::default();
    loop {
        let wait = if first { handshake } else { idle };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => break,
            n = tokio::time::timeout(wait, frames.next()) => n,
        };
        let body = match next {
            Err(_) => {
                let limit = if first {
                    "handshake_timeout_ms"
                } else {
                    "idle_timeout_ms"
                };
                broker
                    .metrics()
                    .limit_refusals
                    .with_label_values(&[limit])
                    .inc();
                debug!(%peer, limit, "closing Kafka connection: timed out");
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(body))) => body.freeze(),
            Ok(Some(Err(e))) => {
                broker.metrics().kafka_protocol_violations.inc();
                warn!(%peer, error = %e, "closing Kafka connection: bad framing");
                break;
            }
        };
        first = false;
        broker
            .metrics()
            .network_in_bytes
            .inc_by(body.len() as u64 + 4);
        // Held until the answer is computed: counts against the
        // broker-wide budget of request bytes in flight.
        let bytes = body.len().max(1).min(u32::MAX as usize) as u32;
        let budget = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = request_bytes.clone().acquire_many_owned(bytes) => p,
        };
        let Ok(budget) = budget else { break };
        let started = Instant::now();
        let request = match decode_request(body) {
            Ok(r) => r,
            Err(FrameError::UnsupportedVersion {
                correlation_id,
                api: ApiKey::ApiVersions,
                ..
            }) => {
                // Answered at v0, so the client can negotiate down.
                let response = handlers::api_versions(
                    tern_kafka::kafka_protocol::error::ResponseError::UnsupportedVersion.code(),
                );
                let frame = encode_response(correlation_id, ApiKey::ApiVersions, 0, &response);
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(frame.ok());
                if answers_tx.send(rx).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                broker.metrics().kafka_protocol_violations.inc();
                warn!(%peer, error = %e, "closing Kafka connection");
                break;
            }
        };
        let api = request.api;
        let api_name = api_label(api);
        broker
            .metrics()
            .kafka_requests
            .with_label_values(&[api_name])
            .inc();
        let correlation_id = request.header.correlation_id;
        let version = request.version;
        let span = tracing::debug_span!("kafka", api = api_name, version, correlation_id);
        let (tx, rx) = oneshot::channel();
        if answers_tx.send(rx).await.is_err() {
            break;
        }
        let finish = {
            let broker = broker.clone();
            move |response: Option<ResponseKind>| {
                broker
                    .metrics()
                    .kafka_request_seconds
                    .with_label_values(&[api_name])
                    .observe(started.elapsed().as_secs_f64());
                let frame = match response {
                    None => None,
                    Some(r) => match encode_response(correlation_id, api, version, &r) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            // A bug of ours, not the client's: say so, and let
                            // the client time out and retry elsewhere.
                            tracing::error!(api = api_name, version, error = %e, "could not encode a Kafka response");
                            return;
                        }
                    },
                };
                let _ = tx.send(frame);
                drop(budget);
            }
        };
        match request.body {
            // SASL runs in order with the reading: the next request must
            // see the principal the exchange proves.
            RequestKind::SaslHandshake(r) => {
                let (response, close) = handlers::sasl_handshake(broker, &session, &mut sasl, r)
                    .instrument(span)
                    .await;
                finish(Some(response));
                if close {
                    break;
                }
            }
            RequestKind::SaslAuthenticate(r) => {
                let (response, close) =
                    handlers::sasl_authenticate(broker, &session, &mut sasl, r, version)
                        .instrument(span)
                        .await;
                finish(Some(response));
                if close {
                    break;
                }
            }
            RequestKind::ApiVersions(_) => finish(Some(handlers::api_versions(0))),
            _ if broker.config().auth_required && session.principal().is_none() => {
                // Kafka closes a connection that skips authentication.
                warn!(target: "tern::security", %peer, api = api_name, "closing Kafka connection: authentication required first");
                break;
            }
            // A user removed (or its password changed) since this
            // connection authenticated: closed, as the client must
            // authenticate again (logged by `revalidate`).
            _ if broker.revalidate(&session).is_err() => break,
            RequestKind::Produce(r) => {
                // Queued now, in arrival order; durability awaited elsewhere.
                let produce = handlers::enqueue_produce(broker, &session, r)
                    .instrument(span.clone())
                    .await;
                let broker = broker.clone();
                tokio::spawn(
                    async move {
                        let response = handlers::finish_produce(&broker, produce).await;
                        finish(response.map(ResponseKind::Produce));
                    }
                    .instrument(span),
                );
            }
            body => {
                let broker = broker.clone();
                let session = session.clone();
                let client_id = request
                    .header
                    .client_id
                    .as_ref()
                    .map_or_else(String::new, |c| c.to_string());
                tokio::spawn(
                    async move {
                        let response =
                            handlers::handle(&broker, &session, &client_id, body, version).await;
                        finish(Some(response));
                    }
                    .instrument(span),
                );
            }
        }
    }
    drop(answers_tx);
    let _ = writer.await;
    debug!(%peer, "Kafka connection closed");
}

/// The metric label of an API (its Kafka name).
fn api_label(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::CreatePartitions => "CreatePartitions",
        _ => "other",
    }
}

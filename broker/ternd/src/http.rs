//! The HTTP endpoints for operators: `/metrics` (Prometheus text format),
//! `/health` (the process is alive and its storage answers) and `/ready`
//! (the broker has opened its topics and accepts clients).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

/// Longest a scraper may take to complete the TLS handshake. Handshakes run
/// one at a time on this port (scrapers are few), so this also bounds how
/// long a stalled one delays the next.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the HTTP endpoints until `shutdown` fires; over TLS with `tls`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<Arc<tern_tls::TlsContext>>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(broker);
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let stopped = async move { shutdown.cancelled().await };
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener { tcp: listener, tls }, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    if let Err(e) = served {
        tracing::warn!(?addr, error = %e, "metrics endpoint stopped");
    }
}

/// The metrics port's listener when TLS is on: yields connections whose
/// handshake succeeded, skipping (and logging) the others.
struct TlsListener {
    tcp: TcpListener,
    tls: Arc<tern_tls::TlsContext>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tern_tls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = self.tls.metrics_acceptor();
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "metrics TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "metrics TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || {
        broker.update_gauges();
        broker.metrics().render()
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn health(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    match broker.store().int_property("rocksdb.is-write-stopped") {
        Some(0) | None => (StatusCode::OK, "ok\n"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage stalled\n"),
    }
}

async fn ready(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    if broker.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

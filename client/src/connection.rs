//! One TCP connection to one broker, with pipelining: many requests in
//! flight, answers matched by correlation id. Requests are written in the
//! order [`Connection::request`] is called, which the producer relies on for
//! per-partition ordering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tern_protocol::{FrameCodec, Request, RequestFrame, Response, ResponseFrame};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
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

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Response, ClientError>>>>>;

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
    closed: Arc<AtomicBool>,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr` (`host:port`); answers that take longer than
    /// `request_timeout` fail with [`ClientError::Timeout`].
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Self::connect_tls(addr, connect_timeout, request_timeout, None).await
    }

    /// Like [`Connection::connect`], over TLS when `tls` is given (the
    /// broker's certificate must name the host of `addr` and chain to the
    /// configured CA). The TLS handshake counts towards `connect_timeout`.
    pub async fn connect_tls(
        addr: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        tls: Option<&tern_tls::TlsConnector>,
    ) -> Result<Connection, ClientError> {
        let failed = |message: String| ClientError::Connect {
            addr: addr.to_owned(),
            message,
        };
        let open = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = tls else {
                return Ok(Box::new(stream) as Box<dyn ByteStream>);
            };
            let name = server_name(addr).ok_or_else(|| failed("no host name in address".into()))?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| failed(format!("TLS handshake: {e}")))?;
            Ok(Box::new(stream) as Box<dyn ByteStream>)
        };
        let stream = tokio::time::timeout(connect_timeout, open)
            .await
            .map_err(|_| failed(format!("timed out after {connect_timeout:?}")))??;
        let (r, w) = tokio::io::split(stream);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_DEPTH);
        let fail_all = {
            let pending = pending.clone();
            let closed = closed.clone();
            let addr = addr.to_owned();
            move || {
                closed.store(true, Ordering::Release);
                let waiting: Vec<_> = pending.lock().expect("pending lock").drain().collect();
                for (_, reply) in waiting {
                    let _ = reply.send(Err(ClientError::ConnectionClosed { addr: addr.clone() }));
                }
            }
        };
        let on_write_end = fail_all.clone();
        tokio::spawn(async move {
            let mut sink = FramedWrite::new(w, FrameCodec::default());
            while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        on_write_end();
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            on_write_end();
        });
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(r, FrameCodec::default());
            while let Some(Ok(body)) = frames.next().await {
                let Ok(frame) = ResponseFrame::decode(body) else {
                    break; // a broker we cannot understand: drop the link
                };
                let reply = reader_pending
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
            fail_all();
        });
        Ok(Connection {
            inner: Arc::new(Inner {
                addr: addr.to_owned(),
                next_id: AtomicU32::new(1),
                pending,
                writer: tx,
                closed,
                timeout: request_timeout,
            }),
        })
    }

    /// The broker address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the socket is gone (a new connection is needed).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Sends a request and waits for its answer, up to the connection's
    /// request timeout plus `extra` (for long-polling fetches).
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
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.request_with(request, Duration::ZERO).await
    }

    /// Queues a request on the socket and returns the receiver of its
    /// answer. Requests are written in the order `submit` is called.
    pub async fn submit(
        &self,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<Response, ClientError>>, ClientError> {
        if self.is_closed() {
            return Err(ClientError::ConnectionClosed {
                addr: self.inner.addr.clone(),
            });
        }
        let correlation_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        RequestFrame {
            correlation_id,
            request,
        }
        .encode(&mut buf);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .insert(correlation_id, tx);
        if self.inner.writer.send(buf.freeze()).await.is_err() {
            self.inner
                .pending
                .lock()
                .expect("pending lock")
                .remove(&correlation_id);
            return Err(ClientError::ConnectionClosed {
                addr: self.inner.addr.clone(),
            });
        }
        Ok(rx)
    }
}

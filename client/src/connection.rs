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
    ///
    /// # Cancel safety
    /// Cancel safe: the socket is dropped with the future.
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("timed out after {connect_timeout:?}"),
                );
                ClientError::connect(addr, timed_out)
            })?
            .map_err(|e| ClientError::connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
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

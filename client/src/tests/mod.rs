//! Client tests against real brokers started in this process (`ternd` as a
//! library, on a temporary directory and loopback ports): the producer's
//! retries, order and de-duplication, its cancel safety, the consumer's
//! positions and commits, and group rebalance callbacks.
//!
//! The brokers load the workspace's plugins from the target directory, so
//! build the workspace first (`cargo build --release --workspace`), as for
//! every end-to-end test.

mod consumer;
mod producer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_protocol::api::OffsetSpec;
use tern_protocol::{Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::{Admin, Client, ClientError, Connection, NewTopic};

/// Runs `f`, failing the test if it takes longer than `limit`.
pub(crate) async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// Polls `check` every 20 ms until it holds, failing the test after `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A single-node broker running in this process. Stopped by
/// [`TestBroker::stop`]; dropped without it, its tasks end with the test's
/// runtime.
pub(crate) struct TestBroker {
    running: Option<ternd::Running>,
    /// Where clients reach it directly.
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The target directory of this build, where cargo puts the plugins.
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf();
    let has_lock_plugin = std::fs::read_dir(&dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("tern_lock_exclusive")
        })
    });
    assert!(
        has_lock_plugin,
        "no plugins in {}: run `cargo build --release --workspace` first",
        dir.display()
    );
    dir
}

/// A loopback port free now, chosen below Linux's ephemeral range (where
/// outgoing connections could take it before the broker binds it).
fn free_port() -> u16 {
    loop {
        let port = 20_000 + (crate::client::random_u64() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl TestBroker {
    /// Starts a broker whose metadata advertises `advertise` (a proxy in
    /// front of it) or its own address, and waits until it serves.
    pub(crate) async fn start(advertise: Option<SocketAddr>) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin_dir = plugin_dir();
        let mut attempts = 0;
        let running = loop {
            attempts += 1;
            let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let flags = ternd::Flags {
                data_dir: Some(dir.path().to_path_buf()),
                listen: Some(listen),
                metrics_listen: Some(([127, 0, 0, 1], free_port()).into()),
                peer_listen: Some(([127, 0, 0, 1], free_port()).into()),
                advertise: advertise.map(|a| a.to_string()),
                durability: Some(ternd::config::DurabilityFlag::PageCache),
                election_timeout_ms: Some(200),
                plugin_dir: Some(plugin_dir.clone()),
                ..Default::default()
            };
            let config = ternd::Config::resolve(flags).expect("valid broker config");
            match ternd::start(config).await {
                Ok(r) => break r,
                // Another process took a port between the check and the bind.
                Err(ternd::StartError::Bind { .. }) if attempts < 5 => continue,
                Err(e) => panic!("start broker: {e}"),
            }
        };
        let broker = running.broker.clone();
        eventually(Duration::from_secs(30), "broker ready", || {
            let ready = broker.is_ready();
            async move { ready }
        })
        .await;
        TestBroker {
            addr: running.client_addr,
            running: Some(running),
            _dir: dir,
        }
    }

    /// A client seeded with this broker's own address.
    pub(crate) async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string())
            .await
            .expect("connect to the test broker")
    }

    /// Creates a topic with one replica and waits until every partition
    /// has a leader.
    pub(crate) async fn create_topic(&self, name: &str, partitions: u32) {
        let admin = Admin::new(self.client().await);
        let topic = NewTopic {
            replication_factor: 1,
            ..NewTopic::new(partitions)
        };
        admin.create_topic(name, topic).await.expect("create topic");
        eventually(Duration::from_secs(30), "partitions have leaders", || {
            let admin = admin.clone();
            async move {
                admin.client().invalidate(name);
                matches!(admin.describe_topic(name).await,
                    Ok(t) if t.partitions.iter().all(|p| p.leader != 0))
            }
        })
        .await;
    }

    /// Log end of one partition, asked of this broker directly (not
    /// through any proxy).
    pub(crate) async fn log_end(&self, topic: &str, partition: u32) -> u64 {
        let conn = Connection::connect(
            &self.addr.to_string(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
        .expect("connect directly");
        match conn
            .request(Request::ListOffsets {
                topic: topic.to_owned(),
                partition,
                spec: OffsetSpec::Latest,
            })
            .await
        {
            Ok(Response::ListOffsets { offset }) => offset,
            other => panic!("list offsets answered {other:?}"),
        }
    }

    /// Stops the broker and waits for its tasks.
    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A TCP proxy in front of a broker that can swallow the broker's answers
/// (the requests still arrive: writes happen, acknowledgements are lost)
/// and cut every connection, as a failing network does.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    drop_replies: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a loopback port; [`Proxy::forward_to`] says where to.
    pub(crate) async fn bind() -> (Proxy, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Proxy {
            addr,
            drop_replies: Arc::new(AtomicBool::new(false)),
            links: Arc::new(Mutex::new(Vec::new())),
            accept: tokio::spawn(async {}).abort_handle(),
        };
        (proxy, listener)
    }

    /// Starts forwarding the connections `listener` accepts to `upstream`.
    pub(crate) fn forward_to(&mut self, listener: TcpListener, upstream: SocketAddr) {
        let drop_replies = self.drop_replies.clone();
        let links = self.links.clone();
        self.accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(broker) = TcpStream::connect(upstream).await else {
                    continue; // the client sees its connection close
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut broker_rx, mut broker_tx) = broker.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut broker_tx).await;
                });
                let drop_replies = drop_replies.clone();
                let down = tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match broker_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if drop_replies.load(Ordering::Acquire) {
                            continue;
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut links = links.lock().expect("links lock");
                links.push(up.abort_handle());
                links.push(down.abort_handle());
            }
        })
        .abort_handle();
    }

    /// Swallows (`true`) or forwards the broker's answers.
    pub(crate) fn drop_replies(&self, drop: bool) {
        self.drop_replies.store(drop, Ordering::Release);
    }

    /// Closes every connection through the proxy (new ones still work).
    pub(crate) fn cut(&self) {
        for link in self.links.lock().expect("links lock").drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test]
async fn errors_keep_their_io_cause_as_source() {
    // Nothing listens on port 1: the refusal must survive as the source.
    let config = crate::ClientConfig {
        connect_timeout: Duration::from_secs(2),
        bootstrap_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let e = bounded(
        Duration::from_secs(30),
        "connect to a closed port",
        Client::connect_with("127.0.0.1:1", config),
    )
    .await
    .expect_err("nothing listens on port 1");
    let mut chain: Vec<String> = vec![e.to_string()];
    let mut io_kind = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        chain.push(c.to_string());
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cause = c.source();
    }
    assert_eq!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionRefused),
        "the I/O error is not in the source chain: {chain:?}"
    );
    assert!(e.is_retriable(), "{e:?}");
    assert!(matches!(e, ClientError::NoBrokerReachable { .. }), "{e:?}");
}

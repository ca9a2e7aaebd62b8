//! The Tern broker as a library: configuration, request handling, the client
//! listener, the HTTP endpoints and background retention. The `ternd`
//! binary is a thin wrapper around [`start`].
//!
//! **Architecture invariant:** nothing a client sends can panic the broker.
//! Decoding is done by `tern-protocol` (bounded, typed errors), every
//! request failure becomes an error code in the response, and storage errors
//! are reported, never unwrapped.

#![warn(missing_docs, unreachable_pub)]

pub mod alloc;
pub mod auth;
pub mod broker;
pub mod config;
pub mod disk;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod plugins;
pub mod read_cache;
pub mod retention;
pub mod server;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use broker::Broker;
pub use config::{Config, Flags};

/// Why the broker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB or the catalogue failed to open.
    #[error("open storage in {path}: {source}")]
    Storage {
        /// The directory.
        path: std::path::PathBuf,
        /// The storage error.
        #[source]
        source: tern_storage::StorageError,
    },
    /// A plugin was refused.
    #[error("load plugins: {0}")]
    Plugin(#[from] tern_plugin_host::PluginError),
    /// Replication could not start.
    #[error("start replication: {0}")]
    Raft(#[from] tern_raft::RaftStartError),
    /// The TLS certificate, key or CA is unusable.
    #[error("load TLS material: {0}")]
    Tls(#[from] tern_tls::TlsError),
    /// A listener could not bind.
    #[error("bind {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A started broker.
pub struct Running {
    /// The broker state.
    pub broker: Arc<Broker>,
    /// Bound client address.
    pub client_addr: SocketAddr,
    /// Bound HTTP address.
    pub metrics_addr: SocketAddr,
    /// Bound peer (Raft) address.
    pub peer_addr: SocketAddr,
    /// Fire to stop every task.
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets the tasks end, and flushes storage.
    pub async fn stop(self) {
        self.broker.set_ready(false);
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.broker.raft().shutdown().await;
        if let Err(e) = self.broker.store().flush() {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}

/// Opens storage, binds the listeners and starts serving.
pub async fn start(mut config: Config) -> Result<Running, StartError> {
    // Plugins first: a refused plugin stops start-up before anything opens.
    let metrics = metrics::Metrics::new();
    let plugins = plugins::load(
        &config.plugin_dir,
        &config.lock_plugin,
        &config.balancer_plugin,
        &config.cache_plugin,
        &metrics,
    )?;
    let cache = match config.read_cache_bytes {
        0 => None,
        bytes => Some(read_cache::ReadCache::new(
            &plugins.cache,
            bytes,
            metrics.clone(),
        )?),
    };
    // TLS before storage too: a bad certificate must not leave a half-started node.
    let tls = match &config.tls {
        Some(files) => Some(tern_tls::TlsContext::load(files.clone())?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store =
        tern_storage::Store::open(&config.data_dir, config.durability).map_err(|source| {
            StartError::Storage {
                path: config.data_dir.clone(),
                source,
            }
        })?;
    let client_listener = listen(config.listen).map_err(|source| StartError::Bind {
        what: "client",
        addr: config.listen,
        source,
    })?;
    let http_listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "metrics",
            addr: config.metrics_listen,
            source,
        })?;
    let peer_listener = listen(config.peer_listen).map_err(|source| StartError::Bind {
        what: "peer",
        addr: config.peer_listen,
        source,
    })?;
    let kafka_listener = match config.kafka_listen {
        None => None,
        Some(addr) => {
            let listener = listen(addr).map_err(|source| StartError::Bind {
                what: "Kafka",
                addr,
                source,
            })?;
            if addr.port() == 0 {
                // Advertise the port the system chose (tests bind port 0).
                let bound = listener
                    .local_addr()
                    .expect("bound listener has an address");
                if config.kafka_advertise.as_deref() == Some(addr.to_string().as_str()) {
                    config.kafka_advertise = Some(bound.to_string());
                }
            }
            Some(listener)
        }
    };
    let client_addr = client_listener
        .local_addr()
        .expect("bound listener has an address");
    let metrics_addr = http_listener
        .local_addr()
        .expect("bound listener has an address");
    let peer_addr = peer_listener
        .local_addr()
        .expect("bound listener has an address");
    let shutdown = CancellationToken::new();
    let cluster = tern_raft::ClusterConfig {
        node_id: config.node_id as u64,
        cluster_name: config.cluster_name.clone(),
        initial_cluster: config.initial_cluster.clone(),
        timing: tern_raft::RaftTiming {
            heartbeat_ms: (config.election_timeout_ms / 5).max(10),
            election_min_ms: config.election_timeout_ms,
            election_max_ms: config.election_timeout_ms * 2,
        },
        join: config.join,
        coord_plugins: plugins.coordination_id(),
        tls: tls.clone(),
    };
    let raft = tern_raft::RaftNode::start(
        cluster,
        store.clone(),
        peer_listener,
        metrics.raft_hooks(),
        Some(plugins.coordination()),
        shutdown.clone(),
    )
    .await?;
    let broker = Broker::open(config.clone(), store, metrics, plugins, cache, raft).await;
    let metrics_tls = tls.clone().filter(|_| config.metrics_tls);
    let mut tasks = vec![
        tokio::spawn(server::serve(
            broker.clone(),
            client_listener,
            tls.clone(),
            server::Protocol::Native,
            shutdown.clone(),
        )),
        tokio::spawn(http::serve(
            broker.clone(),
            http_listener,
            metrics_tls,
            shutdown.clone(),
        )),
        tokio::spawn(retention::run(broker.clone(), shutdown.clone())),
        tokio::spawn(disk::watch(broker.clone(), shutdown.clone())),
        tokio::spawn(broker.clone().follow_catalogue(shutdown.clone())),
        tokio::spawn(broker.clone().balance_leaders(shutdown.clone())),
        tokio::spawn(register(broker.clone(), shutdown.clone())),
        tokio::spawn(broker::run_rebalances(
            Arc::downgrade(&broker),
            shutdown.clone(),
        )),
    ];
    if let Some(user) = config.bootstrap_user.clone() {
        tasks.push(tokio::spawn(bootstrap_user(
            broker.clone(),
            user,
            shutdown.clone(),
        )));
    }
    if let Some(listener) = kafka_listener {
        tasks.push(tokio::spawn(server::serve(
            broker.clone(),
            listener,
            tls.clone(),
            server::Protocol::Kafka,
            shutdown.clone(),
        )));
    }
    if let Some(tls) = tls {
        tasks.push(tokio::spawn(reload_tls(tls, shutdown.clone())));
    }
    tokio::spawn(stop_when_removed(broker.clone(), shutdown.clone()));
    // Ends by itself when the group shuts down (not awaited by `stop`).
    tokio::spawn(broker::count_leader_changes(
        broker.raft().meta().clone(),
        broker
            .metrics()
            .raft_leader_changes
            .with_label_values(&["metadata"]),
    ));
    broker.set_ready(true);
    Ok(Running {
        broker,
        client_addr,
        metrics_addr,
        peer_addr,
        shutdown,
        tasks,
    })
}

/// Stops the broker once the metadata group no longer counts it as a voter
/// (it was removed): a removed broker that kept campaigning would only
/// disturb the others' elections.
async fn stop_when_removed(broker: Arc<Broker>, shutdown: CancellationToken) {
    let me = broker.raft().node_id();
    let mut metrics = broker.raft().meta().metrics();
    let is_voter = |m: &openraft::RaftMetrics<u64, openraft::BasicNode>| {
        m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id == me)
    };
    let mut was_voter = false;
    loop {
        let voter = is_voter(&metrics.borrow());
        if was_voter && !voter {
            // A broker re-added after losing its data replays the group's
            // history, in which it was once removed: only a removal that
            // lasts is real.
            let settled = tokio::time::timeout(REMOVAL_SETTLE, async {
                while metrics.changed().await.is_ok() {
                    if is_voter(&metrics.borrow()) {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            })
            .await;
            if settled.is_err() {
                tracing::warn!(node_id = me, "removed from the cluster; stopping");
                broker.set_refusal(format!("broker {me} was removed from the cluster"));
                shutdown.cancel();
                return;
            }
            continue;
        }
        was_voter |= voter;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// How long a broker must stay out of the voters before it stops itself.
const REMOVAL_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Announces this broker's client address (and coordination plugins) in
/// the catalogue, retrying until the metadata group has a leader. A broker
/// whose lock or balancer plugin differs from a running peer's stops: the
/// plugins decide replicated state, so all brokers must run the same.
async fn register(broker: Arc<Broker>, shutdown: CancellationToken) {
    let listeners = broker
        .config()
        .kafka_advertise
        .iter()
        .map(|addr| (tern_raft::KAFKA_LISTENER.to_string(), addr.clone()))
        .collect();
    let command = tern_raft::Command::Register {
        node_id: broker.raft().node_id(),
        client_addr: broker.config().advertise.clone(),
        coord_plugins: broker.plugins().coordination_id(),
        listeners,
    };
    if let Err(message) = broker.raft().check_plugins().await {
        tracing::error!(%message, "this broker's plugins differ from the cluster's; stopping");
        broker.set_refusal(format!("the cluster refused this broker: {message}"));
        broker.set_ready(false);
        shutdown.cancel();
        return;
    }
    match meta_write_until_decided(&broker, command, "registration", &shutdown).await {
        None => {}
        Some(tern_raft::CommandResponse::Rejected { message, .. }) => {
            tracing::error!(%message, "the cluster refused this broker; stopping");
            broker.set_refusal(format!("the cluster refused this broker: {message}"));
            broker.set_ready(false);
            shutdown.cancel();
        }
        Some(_) => {
            // The rack goes in its own command: registration's layout is
            // that of earlier versions' log entries.
            let rack = tern_raft::Command::SetRack {
                node_id: broker.raft().node_id(),
                rack: broker.config().rack.clone(),
            };
            if meta_write_until_decided(&broker, rack, "rack", &shutdown)
                .await
                .is_some()
            {
                tracing::info!(
                    node_id = broker.raft().node_id(),
                    rack = broker.config().rack.as_deref().unwrap_or("none"),
                    "registered with the cluster"
                );
            }
        }
    }
}

/// Proposes `command` to the metadata group until it is decided (its
/// answer) or the broker stops (`None`), retrying while the group has no
/// leader or the attempt fails; attempts are logged at debug as `what`.
async fn meta_write_until_decided(
    broker: &Broker,
    command: tern_raft::Command,
    what: &str,
    shutdown: &CancellationToken,
) -> Option<tern_raft::CommandResponse> {
    loop {
        let attempt = broker
            .raft()
            .meta_write(command.clone(), std::time::Duration::from_secs(5));
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            o = attempt => o,
        };
        match outcome {
            Ok(answer) => return Some(answer),
            Err(e) => {
                tracing::debug!(error = %e, "{what} pending");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Creates the `TERN_BOOTSTRAP_USER` unless the cluster has a user of that
/// name, retrying until the metadata group has a leader. The check is made
/// in the state machine (`create_only`), so a broker that has not caught up
/// yet cannot undo a password changed since.
async fn bootstrap_user(
    broker: Arc<Broker>,
    user: config::BootstrapUser,
    shutdown: CancellationToken,
) {
    let credential = match tern_auth::StoredCredential::generate(
        &user.password,
        tern_auth::ITERATIONS_DEFAULT,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(user = %user.name, error = %e, "bootstrap user not created");
            return;
        }
    };
    let command = tern_raft::Command::PutUser {
        name: user.name.clone(),
        credential,
        create_only: true,
    };
    match meta_write_until_decided(&broker, command, "bootstrap user", &shutdown).await {
        None => {}
        Some(tern_raft::CommandResponse::Rejected { message, .. }) => {
            tracing::error!(target: "tern::security", user = %user.name, %message, "bootstrap user not created");
        }
        Some(_) => {
            tracing::info!(target: "tern::security", user = %user.name, "bootstrap user present (created unless it existed)");
        }
    }
}

/// How often the TLS files are checked for changes.
const TLS_RELOAD_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Connections the kernel may hold for a listener before it accepts them
/// (capped by `net.core.somaxconn`). Tokio's default, 1,024, overflowed when
/// 1,000 clients connected at once (`tern bench connect`): the dropped SYNs
/// were retried a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// tokio's `TcpListener::bind` sets, so a restart can bind at once).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Reloads the TLS material on SIGHUP and whenever a file changes, so
/// certificates rotate without a restart: connections accepted or dialled
/// afterwards use the new ones. A file that does not load (half-written,
/// mismatched) is logged and the current material stays in use.
async fn reload_tls(tls: Arc<tern_tls::TlsContext>, shutdown: CancellationToken) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; TLS reloads on file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(TLS_RELOAD_CHECK_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let reloaded = if forced {
            tls.reload().map(|()| true)
        } else {
            tls.reload_if_changed()
        };
        match reloaded {
            Ok(true) => tracing::info!(cert = %tls.files().cert.display(), "TLS material reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "TLS reload failed; keeping the current material"),
        }
    }
}

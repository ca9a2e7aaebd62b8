//! The Tern broker as a library: configuration, request handling, the client
//! listener, the HTTP endpoints and background retention. The `ternd`
//! binary is a thin wrapper around [`start`].
//!
//! **Architecture invariant:** nothing a client sends can panic the broker.
//! Decoding is done by `tern-protocol` (bounded, typed errors), every
//! request failure becomes an error code in the response, and storage errors
//! are reported, never unwrapped.

#![warn(missing_docs, unreachable_pub)]

pub mod broker;
pub mod config;
pub mod http;
pub mod metrics;
pub mod plugins;
pub mod read_cache;
pub mod retention;
pub mod server;

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
        if let Err(e) = self.broker.store().flush() {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}

/// Opens storage, binds the listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
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
    let client_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
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
    let client_addr = client_listener
        .local_addr()
        .expect("bound listener has an address");
    let metrics_addr = http_listener
        .local_addr()
        .expect("bound listener has an address");
    let broker =
        Broker::open(config.clone(), store, metrics, plugins, cache).map_err(|source| {
            StartError::Storage {
                path: config.data_dir.clone(),
                source,
            }
        })?;
    let shutdown = CancellationToken::new();
    let tasks = vec![
        tokio::spawn(server::serve(
            broker.clone(),
            client_listener,
            shutdown.clone(),
        )),
        tokio::spawn(http::serve(broker.clone(), http_listener, shutdown.clone())),
        tokio::spawn(retention::run(broker.clone(), shutdown.clone())),
    ];
    broker.set_ready(true);
    Ok(Running {
        broker,
        client_addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

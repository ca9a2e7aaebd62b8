//! Broker configuration: command-line flags, `TERN_*` environment variables
//! and an optional TOML file. Precedence: flag > environment > file > default.
//!
//! This module only parses and validates; it never opens files other than
//! the config file, nor sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use tern_storage::Durability;
use thiserror::Error;

/// Default client port. 9092 stays free for a future Kafka-protocol listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4650";
/// Default HTTP port for `/metrics`, `/health` and `/ready`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:4651";

/// Command-line flags of `ternd` (each also settable as `TERN_<NAME>`).
#[derive(Debug, Parser, Default)]
#[command(
    name = "ternd",
    version,
    about = "Tern broker: a partitioned-log message broker on RocksDB"
)]
pub struct Flags {
    /// Directory holding this node's RocksDB (created if missing).
    /// Default: ./tern-data
    #[arg(long, env = "TERN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address for client connections. Default: 127.0.0.1:4650
    #[arg(long, env = "TERN_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address for the HTTP endpoints /metrics (Prometheus), /health, /ready.
    /// Default: 127.0.0.1:4651
    #[arg(long, env = "TERN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address clients are told to use for this broker in metadata, when it
    /// differs from --listen (behind NAT or in a container). Default: --listen
    #[arg(long, env = "TERN_ADVERTISE")]
    pub advertise: Option<String>,

    /// TOML configuration file; flags and TERN_* variables override its values.
    #[arg(long, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,

    /// When a produce is acknowledged: `fsync` (default; after the write-ahead
    /// log is fsync'd) or `page-cache` (after it is in the OS page cache;
    /// survives a broker crash, not a power loss).
    #[arg(long, env = "TERN_DURABILITY")]
    pub durability: Option<DurabilityFlag>,

    /// How often retention runs, in milliseconds. Default: 30000
    #[arg(long, env = "TERN_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,

    /// Retention time for topics created without one, in ms; -1 keeps forever.
    /// Default: 604800000 (7 days)
    #[arg(long, env = "TERN_DEFAULT_RETENTION_MS", allow_hyphen_values = true)]
    pub default_retention_ms: Option<i64>,

    /// Node id reported in metadata. Default: 1
    #[arg(long, env = "TERN_NODE_ID")]
    pub node_id: Option<u32>,

    /// Bytes of record batches kept in memory in front of RocksDB on the
    /// fetch path; 0 disables the read cache. Default: 67108864 (64 MiB)
    #[arg(long, env = "TERN_READ_CACHE_BYTES")]
    pub read_cache_bytes: Option<u64>,

    /// Lock plugin: a name found in --plugin-dir, or a path. Default: exclusive
    #[arg(long, env = "TERN_LOCK_PLUGIN")]
    pub lock_plugin: Option<String>,

    /// Balancer plugin: a name found in --plugin-dir, or a path. Default: sticky
    #[arg(long, env = "TERN_BALANCER_PLUGIN")]
    pub balancer_plugin: Option<String>,

    /// Cache plugin: a name found in --plugin-dir, or a path. Default: lru
    #[arg(long, env = "TERN_CACHE_PLUGIN")]
    pub cache_plugin: Option<String>,

    /// Directory searched for plugins given by name. Default: the directory
    /// of the ternd executable if it holds plugins, else /usr/lib/tern/plugins
    #[arg(long, env = "TERN_PLUGIN_DIR", global = true)]
    pub plugin_dir: Option<PathBuf>,

    /// Run a maintenance subcommand instead of the broker.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// `ternd` subcommands (without one, `ternd` runs the broker).
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

/// `ternd plugins ...`
#[derive(Debug, clap::Subcommand)]
pub enum PluginsCommand {
    /// Show every plugin in the plugin directory: file, kind, name, version, ABI.
    List,
}

/// Values accepted by `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityFlag {
    /// fsync before acknowledging.
    Fsync,
    /// Acknowledge once in the OS page cache.
    PageCache,
}

/// The `[broker]` table (and top-level keys) of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    advertise: Option<String>,
    durability: Option<DurabilityFlag>,
    retention_check_ms: Option<u64>,
    default_retention_ms: Option<i64>,
    node_id: Option<u32>,
    read_cache_bytes: Option<u64>,
}

/// The `[plugins]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginsFile {
    lock: Option<String>,
    balancer: Option<String>,
    cache: Option<String>,
    dir: Option<PathBuf>,
}

/// Errors in configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for Tern.
    #[error("parse config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of its domain.
    #[error("invalid setting {key}: {detail}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        detail: String,
    },
}

/// The resolved configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// Client listener.
    pub listen: SocketAddr,
    /// HTTP listener.
    pub metrics_listen: SocketAddr,
    /// Host:port advertised to clients.
    pub advertise: String,
    /// Write durability.
    pub durability: Durability,
    /// Retention interval in ms.
    pub retention_check_ms: u64,
    /// Default retention for new topics in ms (-1 = forever).
    pub default_retention_ms: i64,
    /// This node's id.
    pub node_id: u32,
    /// Read-cache bound in bytes (0 = off).
    pub read_cache_bytes: u64,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// Lock plugin name or path.
    pub lock_plugin: String,
    /// Balancer plugin name or path.
    pub balancer_plugin: String,
    /// Cache plugin name or path.
    pub cache_plugin: String,
}

impl Config {
    /// Resolves flags (already merged with the environment by clap) over the file.
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let (file, plugins) = match &flags.config {
            Some(path) => load_file(path)?,
            None => (FileConfig::default(), PluginsFile::default()),
        };
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let durability = match flags.durability.or(file.durability) {
            None | Some(DurabilityFlag::Fsync) => Durability::Fsync,
            Some(DurabilityFlag::PageCache) => Durability::PageCache,
        };
        let retention_check_ms = flags
            .retention_check_ms
            .or(file.retention_check_ms)
            .unwrap_or(30_000);
        if retention_check_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "retention_check_ms",
                detail: "must be positive".into(),
            });
        }
        let default_retention_ms = flags
            .default_retention_ms
            .or(file.default_retention_ms)
            .unwrap_or(7 * 24 * 3600 * 1000);
        if default_retention_ms < -1 {
            return Err(ConfigError::Invalid {
                key: "default_retention_ms",
                detail: "use -1 for forever or a positive number of ms".into(),
            });
        }
        Ok(Config {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("tern-data")),
            listen,
            metrics_listen: flags
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            advertise: flags
                .advertise
                .or(file.advertise)
                .unwrap_or_else(|| listen.to_string()),
            durability,
            retention_check_ms,
            default_retention_ms,
            node_id: flags.node_id.or(file.node_id).unwrap_or(1),
            read_cache_bytes: flags
                .read_cache_bytes
                .or(file.read_cache_bytes)
                .unwrap_or(64 << 20),
            plugin_dir: flags
                .plugin_dir
                .or(plugins.dir)
                .unwrap_or_else(crate::plugins::default_plugin_dir),
            lock_plugin: flags
                .lock_plugin
                .or(plugins.lock)
                .unwrap_or_else(|| crate::plugins::DEFAULT_LOCK_PLUGIN.into()),
            balancer_plugin: flags
                .balancer_plugin
                .or(plugins.balancer)
                .unwrap_or_else(|| crate::plugins::DEFAULT_BALANCER_PLUGIN.into()),
            cache_plugin: flags
                .cache_plugin
                .or(plugins.cache)
                .unwrap_or_else(|| crate::plugins::DEFAULT_CACHE_PLUGIN.into()),
        })
    }
}

fn load_file(path: &Path) -> Result<(FileConfig, PluginsFile), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        broker: Option<FileConfig>,
        plugins: Option<PluginsFile>,
    }
    let root: Root = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((
        root.broker.unwrap_or_default(),
        root.plugins.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(
            &path,
            "[broker]\nlisten = \"127.0.0.1:5000\"\nnode_id = 7\ndurability = \"page-cache\"\n\n[plugins]\ncache = \"s3-fifo\"\nlock = \"read-write\"\n",
        )
        .unwrap();
        let cfg = Config::resolve(Flags {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:6000".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.listen.port(), 6000);
        assert_eq!(cfg.node_id, 7);
        assert_eq!(cfg.durability, Durability::PageCache);
        assert_eq!(cfg.metrics_listen.port(), 4651);
        assert_eq!(cfg.cache_plugin, "s3-fifo");
        assert_eq!(cfg.lock_plugin, "read-write");
        assert_eq!(cfg.balancer_plugin, "sticky");
    }

    #[test]
    fn an_unknown_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, "[broker]\nlisen = \"x\"\n").unwrap();
        let err = Config::resolve(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}

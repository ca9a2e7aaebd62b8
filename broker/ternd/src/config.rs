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

/// Default client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4650";
/// Default port of the Kafka-protocol listener (Kafka's own).
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Default HTTP port for `/metrics`, `/health` and `/ready`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:4651";
/// Default port for Raft traffic between brokers.
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:4652";

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

    /// Address for Kafka-protocol clients (librdkafka, the Java client,
    /// kcat...), or `off`. Default: 127.0.0.1:9092
    #[arg(long, env = "TERN_KAFKA_LISTEN")]
    pub kafka_listen: Option<String>,

    /// Address Kafka clients are told to use for this broker, when it
    /// differs from --kafka-listen. Default: --kafka-listen
    #[arg(long, env = "TERN_KAFKA_ADVERTISE")]
    pub kafka_advertise: Option<String>,

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

    /// This broker's id in the cluster (a positive integer, unique, never
    /// reused for another data dir). Default: 1
    #[arg(long, env = "TERN_NODE_ID")]
    pub node_id: Option<u32>,

    /// Address for Raft traffic from the other brokers. Default: 127.0.0.1:4652
    #[arg(long, env = "TERN_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Every broker of the cluster as ID@HOST:PORT (peer addresses), comma
    /// separated, e.g. 1@10.0.0.1:4652,2@10.0.0.2:4652,3@10.0.0.3:4652. Give
    /// the same list to every broker. Default: this broker alone
    /// (<node-id>@<peer-listen>): a one-node cluster.
    #[arg(long, env = "TERN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Join an existing cluster instead of bootstrapping one: the broker
    /// waits until `tern cluster add-broker ID HOST:PEER_PORT` adds it.
    /// --initial-cluster must list this broker and at least one member.
    #[arg(long, env = "TERN_JOIN")]
    pub join: bool,

    /// Name of the cluster; brokers refuse peers with another name. Default: tern
    #[arg(long, env = "TERN_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// Raft election timeout in ms: a follower that hears no leader for a
    /// random time between this and twice this starts an election. Leader
    /// failover takes about this long. Default: 500
    #[arg(long, env = "TERN_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,

    /// Move leadership back to each partition's preferred leader (the first
    /// broker of its replica list) by itself: a broker that is the
    /// preferred leader of a partition led elsewhere, and whose replica has
    /// caught up for a few seconds, campaigns for it. `false` leaves leaders
    /// where elections put them until `tern cluster balance-leaders`.
    /// Default: true
    #[arg(
        long,
        env = "TERN_AUTO_LEADER_BALANCE",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub auto_leader_balance: Option<bool>,

    /// Bytes of record batches kept in memory in front of RocksDB on the
    /// fetch path; 0 disables the read cache. Default: 67108864 (64 MiB)
    #[arg(long, env = "TERN_READ_CACHE_BYTES")]
    pub read_cache_bytes: Option<u64>,

    /// Refuse produces (error disk_full) while the data directory's file
    /// system has less free space than this, so RocksDB never runs out of
    /// space mid-write; writes resume by themselves when space returns.
    /// Default: 268435456 (256 MiB)
    #[arg(long, env = "TERN_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,

    /// Lock plugin: a name found in --plugin-dir, or a path. Default: exclusive
    #[arg(long, env = "TERN_LOCK_PLUGIN")]
    pub lock_plugin: Option<String>,

    /// Balancer plugin: a name found in --plugin-dir, or a path. Default: sticky
    #[arg(long, env = "TERN_BALANCER_PLUGIN")]
    pub balancer_plugin: Option<String>,

    /// Cache plugin: a name found in --plugin-dir, or a path. Default: lru
    #[arg(long, env = "TERN_CACHE_PLUGIN")]
    pub cache_plugin: Option<String>,

    /// Most client connections open at once; more are refused with
    /// too_many_connections. Default: 10000
    #[arg(long, env = "TERN_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,

    /// Most client connections open at once from one IP address; more are
    /// refused with too_many_connections. Default: 1000
    #[arg(long, env = "TERN_CONNECTIONS_PER_IP_MAX")]
    pub connections_per_ip_max: Option<usize>,

    /// A new client connection must deliver its first whole request within
    /// this many ms, or it is closed. Default: 10000
    #[arg(long, env = "TERN_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,

    /// A client connection with nothing in flight that delivers no whole
    /// request for this many ms is closed (clients reconnect by themselves).
    /// Default: 600000 (10 minutes)
    #[arg(long, env = "TERN_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Bytes of requests read but not yet answered, over all client
    /// connections; at the limit, connections stop reading until answers
    /// go out. At least the frame limit (16 MiB). Default: 268435456 (256 MiB)
    #[arg(long, env = "TERN_REQUEST_BYTES_IN_FLIGHT_MAX")]
    pub request_bytes_in_flight_max: Option<usize>,

    /// Most topics in the cluster; creating one more is refused with
    /// limit_exceeded. Give every broker the same value. Default: 10000
    #[arg(long, env = "TERN_CLUSTER_TOPICS_MAX")]
    pub cluster_topics_max: Option<usize>,

    /// Most partitions in the cluster, all topics together; a topic that
    /// would go over is refused with limit_exceeded. Give every broker the
    /// same value. Default: 100000
    #[arg(long, env = "TERN_CLUSTER_PARTITIONS_MAX")]
    pub cluster_partitions_max: Option<u64>,

    /// Directory searched for plugins given by name. Default: the directory
    /// of the ternd executable if it holds plugins, else /usr/lib/tern/plugins
    #[arg(long, env = "TERN_PLUGIN_DIR", global = true)]
    pub plugin_dir: Option<PathBuf>,

    /// PEM certificate of this broker, issued under the cluster CA by
    /// `tern cert issue --node-id N`. With --tls-key and --tls-ca it turns TLS
    /// on for every listener: mutual TLS between brokers (a peer is accepted
    /// only with a certificate proving its node id), TLS for clients (a client
    /// certificate is optional and names the principal) and for /metrics.
    /// The files are reloaded on SIGHUP and when they change.
    #[arg(long, env = "TERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate of the cluster CA (`tern cert create-ca`): peers and
    /// client certificates must chain to it.
    #[arg(long, env = "TERN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Serve /metrics, /health and /ready over plain HTTP even when TLS is on.
    #[arg(long, env = "TERN_METRICS_PLAINTEXT")]
    pub metrics_plaintext: bool,

    /// This broker's rack (or zone): a partition's replicas go to distinct
    /// racks when there are enough (at most 64 bytes).
    #[arg(long, env = "TERN_RACK")]
    pub rack: Option<String>,

    /// After a broker is added, rebalance the cluster by itself: move the
    /// replicas whose consistent-hash placement changed (about 1/N).
    #[arg(long, env = "TERN_AUTO_REBALANCE")]
    pub auto_rebalance: bool,

    /// Allow the client or peer listener on a non-loopback address without
    /// TLS. Anyone who reaches such a port can then act as a client or a
    /// broker: use it only on a network you trust completely.
    #[arg(long, env = "TERN_INSECURE")]
    pub insecure: bool,

    /// A principal allowed every operation (a TLS client certificate's
    /// name or an authenticated user). Repeat for several; the env variable
    /// takes a comma-separated list.
    #[arg(long = "super-user", env = "TERN_SUPER_USERS", value_delimiter = ',')]
    pub super_users: Vec<String>,

    /// Require every client connection to authenticate (SCRAM-SHA-256, or
    /// a TLS client certificate) before anything but the SASL handshake.
    #[arg(long, env = "TERN_AUTH_REQUIRED")]
    pub auth_required: bool,

    /// On start, create this user if the cluster has no user of that name
    /// yet; its password is read from the environment variable
    /// TERN_BOOTSTRAP_PASSWORD (never from the command line).
    #[arg(long, env = "TERN_BOOTSTRAP_USER")]
    pub bootstrap_user: Option<String>,

    /// Check every request against the cluster's ACL rules (`tern acl`):
    /// a principal may do only what a rule allows it (super-users: all).
    #[arg(long, env = "TERN_AUTHORIZATION")]
    pub authorization: bool,

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
    kafka_listen: Option<String>,
    kafka_advertise: Option<String>,
    durability: Option<DurabilityFlag>,
    retention_check_ms: Option<u64>,
    default_retention_ms: Option<i64>,
    node_id: Option<u32>,
    read_cache_bytes: Option<u64>,
    min_free_bytes: Option<u64>,
    peer_listen: Option<SocketAddr>,
    initial_cluster: Option<String>,
    cluster_name: Option<String>,
    election_timeout_ms: Option<u64>,
    auto_leader_balance: Option<bool>,
    connections_max: Option<usize>,
    connections_per_ip_max: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    request_bytes_in_flight_max: Option<usize>,
    cluster_topics_max: Option<usize>,
    cluster_partitions_max: Option<u64>,
    insecure: Option<bool>,
    rack: Option<String>,
    auto_rebalance: Option<bool>,
}

/// The `[auth]` table of the TOML file: who clients are and what they may do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    super_users: Option<Vec<String>>,
    required: Option<bool>,
    authorization: Option<bool>,
}

/// The `[tls]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    metrics_plaintext: Option<bool>,
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
    /// Kafka-protocol listener; `None` when off.
    pub kafka_listen: Option<SocketAddr>,
    /// Host:port advertised to Kafka clients (when the listener is on).
    pub kafka_advertise: Option<String>,
    /// Write durability.
    pub durability: Durability,
    /// Retention interval in ms.
    pub retention_check_ms: u64,
    /// Default retention for new topics in ms (-1 = forever).
    pub default_retention_ms: i64,
    /// This node's id.
    pub node_id: u32,
    /// Raft listener.
    pub peer_listen: SocketAddr,
    /// Every broker: node id → peer address.
    pub initial_cluster: std::collections::BTreeMap<u64, String>,
    /// Cluster name.
    pub cluster_name: String,
    /// Join an existing cluster (never bootstrap).
    pub join: bool,
    /// Raft election timeout (minimum) in ms.
    pub election_timeout_ms: u64,
    /// Preferred leaders take their partitions back by themselves.
    pub auto_leader_balance: bool,
    /// Read-cache bound in bytes (0 = off).
    pub read_cache_bytes: u64,
    /// Free space below which produces are refused.
    pub min_free_bytes: u64,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// Lock plugin name or path.
    pub lock_plugin: String,
    /// Balancer plugin name or path.
    pub balancer_plugin: String,
    /// Cache plugin name or path.
    pub cache_plugin: String,
    /// TLS material; `None`: every listener is plain TCP.
    pub tls: Option<tern_tls::TlsFiles>,
    /// Whether the metrics port uses TLS (when `tls` is set).
    pub metrics_tls: bool,
    /// Non-loopback listeners without TLS were explicitly allowed.
    pub insecure: bool,
    /// This broker's rack, if declared.
    pub rack: Option<String>,
    /// Rebalance after a broker is added.
    pub auto_rebalance: bool,
    /// Principals allowed every operation.
    pub super_users: Vec<String>,
    /// Connections must authenticate before any other request.
    pub auth_required: bool,
    /// The user created at start if absent (`TERN_BOOTSTRAP_USER`).
    pub bootstrap_user: Option<BootstrapUser>,
    /// Every request is checked against the ACL rules.
    pub authorization: bool,
    /// Limits on client connections.
    pub connection_limits: ConnectionLimits,
    /// Most topics in the cluster.
    pub cluster_topics_max: usize,
    /// Most partitions in the cluster, all topics together.
    pub cluster_partitions_max: u64,
}

/// The user `TERN_BOOTSTRAP_USER` / `TERN_BOOTSTRAP_PASSWORD` name, created
/// at start when the cluster has no user of that name.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapUser {
    /// Username.
    pub name: String,
    /// Password (never logged: `Debug` hides it).
    pub password: String,
}

impl std::fmt::Debug for BootstrapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Limits on the client port: how many connections, how long they may
/// stall, how many request bytes they may hold. Each refusal names the
/// limit (see docs/reliability.md, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most client connections open at once.
    pub connections_max: usize,
    /// Most client connections open at once from one IP address.
    pub connections_per_ip_max: usize,
    /// Time a new connection has to deliver its first whole request.
    pub handshake_timeout_ms: u64,
    /// Time a connection with nothing in flight may go without a request.
    pub idle_timeout_ms: u64,
    /// Bytes of requests read and not yet answered, over all connections.
    pub request_bytes_in_flight_max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            connections_max: 10_000,
            connections_per_ip_max: 1_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            request_bytes_in_flight_max: 256 << 20,
        }
    }
}

impl ConnectionLimits {
    fn resolve(flags: &Flags, file: &FileConfig) -> Result<ConnectionLimits, ConfigError> {
        let d = ConnectionLimits::default();
        let limits = ConnectionLimits {
            connections_max: flags
                .connections_max
                .or(file.connections_max)
                .unwrap_or(d.connections_max),
            connections_per_ip_max: flags
                .connections_per_ip_max
                .or(file.connections_per_ip_max)
                .unwrap_or(d.connections_per_ip_max),
            handshake_timeout_ms: flags
                .handshake_timeout_ms
                .or(file.handshake_timeout_ms)
                .unwrap_or(d.handshake_timeout_ms),
            idle_timeout_ms: flags
                .idle_timeout_ms
                .or(file.idle_timeout_ms)
                .unwrap_or(d.idle_timeout_ms),
            request_bytes_in_flight_max: flags
                .request_bytes_in_flight_max
                .or(file.request_bytes_in_flight_max)
                .unwrap_or(d.request_bytes_in_flight_max),
        };
        let invalid = |key, detail: &str| ConfigError::Invalid {
            key,
            detail: detail.into(),
        };
        if limits.connections_max == 0 {
            return Err(invalid("connections_max", "must be positive"));
        }
        if limits.connections_per_ip_max == 0 {
            return Err(invalid("connections_per_ip_max", "must be positive"));
        }
        if limits.handshake_timeout_ms == 0 {
            return Err(invalid("handshake_timeout_ms", "must be positive"));
        }
        if limits.idle_timeout_ms == 0 {
            return Err(invalid("idle_timeout_ms", "must be positive"));
        }
        // One whole frame must always fit, or a connection could wait forever.
        let floor = tern_protocol::FRAME_BYTES_MAX;
        if !(floor..=u32::MAX as usize).contains(&limits.request_bytes_in_flight_max) {
            return Err(ConfigError::Invalid {
                key: "request_bytes_in_flight_max",
                detail: format!("must be between the frame limit ({floor}) and {}", u32::MAX),
            });
        }
        Ok(limits)
    }
}

impl Config {
    /// Resolves flags (already merged with the environment by clap) over the file.
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let (file, plugins, tls_file, auth_file) = match &flags.config {
            Some(path) => load_file(path)?,
            None => Default::default(),
        };
        let connection_limits = ConnectionLimits::resolve(&flags, &file)?;
        let cluster_topics_max = flags
            .cluster_topics_max
            .or(file.cluster_topics_max)
            .unwrap_or(10_000);
        let cluster_partitions_max = flags
            .cluster_partitions_max
            .or(file.cluster_partitions_max)
            .unwrap_or(100_000);
        if cluster_topics_max == 0 || cluster_partitions_max == 0 {
            return Err(ConfigError::Invalid {
                key: "cluster_topics_max",
                detail: "cluster_topics_max and cluster_partitions_max must be positive".into(),
            });
        }
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
        let node_id = flags.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            return Err(ConfigError::Invalid {
                key: "node_id",
                detail: "must be a positive integer".into(),
            });
        }
        let peer_listen = flags
            .peer_listen
            .or(file.peer_listen)
            .unwrap_or_else(|| DEFAULT_PEER_LISTEN.parse().expect("valid default"));
        let initial_cluster = match flags.initial_cluster.or(file.initial_cluster) {
            Some(list) => parse_initial_cluster(&list)?,
            None => [(node_id as u64, peer_listen.to_string())].into(),
        };
        if !initial_cluster.contains_key(&(node_id as u64)) {
            return Err(ConfigError::Invalid {
                key: "initial_cluster",
                detail: format!("does not list this broker's node id {node_id}"),
            });
        }
        let election_timeout_ms = flags
            .election_timeout_ms
            .or(file.election_timeout_ms)
            .unwrap_or(500);
        if !(50..=60_000).contains(&election_timeout_ms) {
            return Err(ConfigError::Invalid {
                key: "election_timeout_ms",
                detail: "must be between 50 and 60000".into(),
            });
        }
        let tls = match (
            flags.tls_cert.or(tls_file.cert),
            flags.tls_key.or(tls_file.key),
            flags.tls_ca.or(tls_file.ca),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(tern_tls::TlsFiles { cert, key, ca }),
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tls",
                    detail: "the certificate, key and CA (--tls-cert, --tls-key, --tls-ca) go \
                             together: give all three or none"
                        .into(),
                })
            }
        };
        let kafka_listen = match flags
            .kafka_listen
            .or(file.kafka_listen)
            .unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.into())
            .as_str()
        {
            "off" | "none" | "" => None,
            addr => Some(
                addr.parse::<SocketAddr>()
                    .map_err(|e| ConfigError::Invalid {
                        key: "kafka_listen",
                        detail: format!("{addr:?} is not an address nor `off`: {e}"),
                    })?,
            ),
        };
        let kafka_advertise = kafka_listen.map(|addr| {
            flags
                .kafka_advertise
                .clone()
                .or(file.kafka_advertise.clone())
                .unwrap_or_else(|| addr.to_string())
        });
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if tls.is_none() && !insecure {
            let kafka = kafka_listen.map(|a| ("Kafka", a));
            for (what, addr) in [("client", listen), ("peer", peer_listen)]
                .into_iter()
                .chain(kafka)
            {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::Invalid {
                        key: "insecure",
                        detail: format!(
                            "the {what} listener {addr} is not on loopback and TLS is off, so \
                             anyone who reaches it could act as a {}: set --tls-cert, --tls-key \
                             and --tls-ca (make them with `tern cert`), or --insecure on a \
                             network you trust completely",
                            if what == "peer" { "broker" } else { "client" }
                        ),
                    });
                }
            }
        }
        let metrics_tls =
            tls.is_some() && !(flags.metrics_plaintext || tls_file.metrics_plaintext == Some(true));
        let super_users = if flags.super_users.is_empty() {
            auth_file.super_users.unwrap_or_default()
        } else {
            flags.super_users
        };
        let auth_required = flags.auth_required || auth_file.required.unwrap_or(false);
        let bootstrap_user = match flags.bootstrap_user {
            None => None,
            Some(name) => {
                tern_auth::validate_username(&name).map_err(|e| ConfigError::Invalid {
                    key: "bootstrap_user",
                    detail: e.to_string(),
                })?;
                let password =
                    std::env::var("TERN_BOOTSTRAP_PASSWORD").map_err(|_| ConfigError::Invalid {
                        key: "bootstrap_user",
                        detail: "TERN_BOOTSTRAP_USER is set but TERN_BOOTSTRAP_PASSWORD is not"
                            .into(),
                    })?;
                tern_auth::validate_password(&password).map_err(|e| ConfigError::Invalid {
                    key: "bootstrap_user",
                    detail: e.to_string(),
                })?;
                Some(BootstrapUser { name, password })
            }
        };
        let authorization = flags.authorization || auth_file.authorization.unwrap_or(false);
        let rack = flags.rack.or(file.rack);
        if let Some(r) = &rack {
            if r.is_empty()
                || r.len() > tern_raft::RACK_BYTES_MAX
                || r.chars().any(char::is_control)
            {
                return Err(ConfigError::Invalid {
                    key: "rack",
                    detail: format!(
                        "{r:?}: a rack name has 1 to {} bytes, no control characters",
                        tern_raft::RACK_BYTES_MAX
                    ),
                });
            }
        }
        let auto_rebalance = flags.auto_rebalance || file.auto_rebalance.unwrap_or(false);
        Ok(Config {
            rack,
            auto_rebalance,
            authorization,
            tls,
            metrics_tls,
            insecure,
            super_users,
            auth_required,
            bootstrap_user,
            connection_limits,
            cluster_topics_max,
            cluster_partitions_max,
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
            kafka_listen,
            kafka_advertise,
            durability,
            retention_check_ms,
            default_retention_ms,
            node_id,
            peer_listen,
            initial_cluster,
            cluster_name: flags
                .cluster_name
                .or(file.cluster_name)
                .unwrap_or_else(|| "tern".into()),
            election_timeout_ms,
            auto_leader_balance: flags
                .auto_leader_balance
                .or(file.auto_leader_balance)
                .unwrap_or(true),
            join: flags.join,
            min_free_bytes: flags
                .min_free_bytes
                .or(file.min_free_bytes)
                .unwrap_or(256 << 20),
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

/// Parses `ID@HOST:PORT,ID@HOST:PORT,...`.
pub fn parse_initial_cluster(
    list: &str,
) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        key: "initial_cluster",
        detail,
    };
    let mut out = std::collections::BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| invalid(format!("{item:?} is not ID@HOST:PORT")))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|i| *i > 0 && *i <= u32::MAX as u64)
            .ok_or_else(|| invalid(format!("{id:?} is not a positive node id")))?;
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid(format!("{addr:?} is not HOST:PORT")));
        }
        if out.insert(id, addr.to_owned()).is_some() {
            return Err(invalid(format!("node id {id} is listed twice")));
        }
    }
    if out.is_empty() {
        return Err(invalid("is empty".into()));
    }
    Ok(out)
}

fn load_file(path: &Path) -> Result<(FileConfig, PluginsFile, TlsFile, AuthFile), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        broker: Option<FileConfig>,
        plugins: Option<PluginsFile>,
        tls: Option<TlsFile>,
        auth: Option<AuthFile>,
    }
    let root: Root = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((
        root.broker.unwrap_or_default(),
        root.plugins.unwrap_or_default(),
        root.tls.unwrap_or_default(),
        root.auth.unwrap_or_default(),
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
    fn auto_leader_balance_is_on_unless_a_flag_or_the_file_turns_it_off() {
        assert!(
            Config::resolve(Flags::default())
                .unwrap()
                .auto_leader_balance
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, "[broker]\nauto_leader_balance = false\n").unwrap();
        let from_file = |flags: Flags| {
            Config::resolve(Flags {
                config: Some(path.clone()),
                ..flags
            })
            .unwrap()
            .auto_leader_balance
        };
        assert!(!from_file(Flags::default()));
        let parse = |args: &[&str]| {
            let mut argv = vec!["ternd"];
            argv.extend_from_slice(args);
            Flags::try_parse_from(argv).unwrap()
        };
        // A bare flag turns it on over the file; `=false` turns it off.
        assert!(from_file(parse(&["--auto-leader-balance"])));
        assert!(
            !Config::resolve(parse(&["--auto-leader-balance=false"]))
                .unwrap()
                .auto_leader_balance
        );
        assert!(
            !Config::resolve(parse(&["--auto-leader-balance", "off"]))
                .unwrap()
                .auto_leader_balance
        );
    }

    #[test]
    fn authorization_is_off_unless_the_flag_or_the_file_turns_it_on() {
        assert!(!Config::resolve(Flags::default()).unwrap().authorization);
        let cfg = Config::resolve(Flags {
            authorization: true,
            ..Default::default()
        })
        .unwrap();
        assert!(cfg.authorization);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(
            &path,
            "[auth]\nauthorization = true\nsuper_users = [\"root\"]\n",
        )
        .unwrap();
        let cfg = Config::resolve(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert!(cfg.authorization);
        assert_eq!(cfg.super_users, vec!["root".to_string()]);
    }

    #[test]
    fn a_non_loopback_listener_without_tls_is_refused_unless_insecure() {
        let open = Flags {
            listen: Some("0.0.0.0:4650".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(open).unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:4650") && err.contains("--insecure"),
            "{err}"
        );
        let peer_open = Flags {
            peer_listen: Some("0.0.0.0:4652".parse().unwrap()),
            ..Default::default()
        };
        assert!(Config::resolve(peer_open).is_err());
        let allowed = Flags {
            listen: Some("0.0.0.0:4650".parse().unwrap()),
            insecure: true,
            ..Default::default()
        };
        assert!(Config::resolve(allowed).unwrap().insecure);
        let half_tls = Flags {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        let err = Config::resolve(half_tls).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn the_initial_cluster_is_parsed_and_checked() {
        let c = parse_initial_cluster("1@127.0.0.1:4652, 2@host-b:4652,3@[::1]:9").unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[&2], "host-b:4652");
        for bad in ["", "1@x", "0@a:1", "a@b:1", "1@a:1,1@b:2", "1-a:1"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} accepted");
        }
        let err = Config::resolve(Flags {
            node_id: Some(4),
            initial_cluster: Some("1@a:1,2@b:2".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("node id 4"), "{err}");
        let single = Config::resolve(Flags::default()).unwrap();
        assert_eq!(single.initial_cluster[&1], "127.0.0.1:4652");
    }

    #[test]
    fn auth_required_comes_from_the_flag_or_the_auth_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, "[auth]\nrequired = true\nsuper_users = [\"root\"]\n").unwrap();
        let cfg = Config::resolve(Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert!(cfg.auth_required);
        assert_eq!(cfg.super_users, vec!["root"]);
        assert!(!Config::resolve(Flags::default()).unwrap().auth_required);
        let flagged = Config::resolve(Flags {
            auth_required: true,
            ..Default::default()
        })
        .unwrap();
        assert!(flagged.auth_required);
        let bad = Config::resolve(Flags {
            bootstrap_user: Some("has space".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad.to_string().contains("bootstrap_user"), "{bad}");
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

    #[test]
    fn connection_limits_come_from_flags_or_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.toml");
        std::fs::write(
            &path,
            "[broker]\nconnections_per_ip_max = 5\nidle_timeout_ms = 7000\n",
        )
        .unwrap();
        let cfg = Config::resolve(Flags {
            config: Some(path),
            connections_max: Some(9),
            ..Default::default()
        })
        .unwrap();
        let limits = cfg.connection_limits;
        assert_eq!(limits.connections_max, 9);
        assert_eq!(limits.connections_per_ip_max, 5);
        assert_eq!(limits.idle_timeout_ms, 7000);
        assert_eq!(limits.handshake_timeout_ms, 10_000);
        let err = Config::resolve(Flags {
            request_bytes_in_flight_max: Some(1 << 20),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("request_bytes_in_flight_max"),
            "{err}"
        );
        let err = Config::resolve(Flags {
            connections_per_ip_max: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("connections_per_ip_max"), "{err}");
    }
}

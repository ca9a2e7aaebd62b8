//! Every Prometheus metric the broker exports, defined once.
//!
//! Names follow Prometheus conventions: `tern_` prefix, base units in the
//! name, `_total` for counters. Labels are bounded: API names and error
//! codes are fixed sets; topic labels are bounded by the number of topics;
//! per-partition series stop at [`PARTITION_SERIES_MAX`] partitions;
//! per-group series (group names are chosen by clients) stop at
//! `GROUP_SERIES_MAX` groups and per-group-partition series at 1,000.
//!
//! This module never does I/O; the HTTP endpoint lives in `http`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Most partitions that get their own per-partition series.
pub const PARTITION_SERIES_MAX: usize = 1_000;

/// The named limits whose refusals `tern_limit_refusals_total` counts, by
/// the `limit` label (the name of the limit, as in docs/reliability.md);
/// the coordination limits (`tern_raft::coord::LIMIT_LABELS`) come too.
pub const REFUSED_LIMITS: [&str; 9] = [
    "fetch_partitions_max",
    "cluster_topics_max",
    "cluster_partitions_max",
    "frame_bytes_max",
    "connections_max",
    "connections_per_ip_max",
    "handshake_timeout_ms",
    "idle_timeout_ms",
    "partition_uncommitted_bytes_max",
];

/// The broker's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// Requests received, by API.
    pub requests: IntCounterVec,
    /// Requests (or partitions within them) that failed, by API and error code.
    pub request_errors: IntCounterVec,
    /// Time from request decode to response enqueue, by API.
    pub request_seconds: HistogramVec,
    /// Kafka-protocol requests received, by Kafka API name.
    pub kafka_requests: IntCounterVec,
    /// Kafka-protocol requests (or partitions within them) that failed, by
    /// API and Kafka error name.
    pub kafka_request_errors: IntCounterVec,
    /// Kafka-protocol request latency, by API.
    pub kafka_request_seconds: HistogramVec,
    /// Kafka-protocol connections closed for a malformed or unsupported
    /// request.
    pub kafka_protocol_violations: IntCounter,
    /// Bytes of frames read from clients.
    pub network_in_bytes: IntCounter,
    /// Bytes of frames written to clients.
    pub network_out_bytes: IntCounter,
    /// Open client connections.
    pub connections: IntGauge,
    /// Connections closed for a protocol violation (bad framing, oversize).
    pub protocol_violations: IntCounter,
    /// Records appended, by topic.
    pub records_in: IntCounterVec,
    /// Batch bytes appended, by topic.
    pub bytes_in: IntCounterVec,
    /// Batch bytes served to consumers, by topic.
    pub bytes_out: IntCounterVec,
    /// Batches per storage write (group commit size).
    pub append_group_batches: Histogram,
    /// Duration of one storage write including fsync.
    pub append_seconds: Histogram,
    /// First stored offset, per partition.
    pub log_start_offset: IntGaugeVec,
    /// Next offset to write, per partition.
    pub log_end_offset: IntGaugeVec,
    /// Stored batch bytes, per partition.
    pub log_size_bytes: IntGaugeVec,
    /// Number of topics.
    pub topics: IntGauge,
    /// Number of partitions on this node.
    pub partitions: IntGauge,
    /// Replicas the catalogue assigns here that could not be opened (they
    /// are retried with backoff).
    pub replicas_unopened: IntGauge,
    /// Failed attempts to open a replica.
    pub replica_open_failures: IntCounter,
    /// Bytes removed by retention, by reason.
    pub retention_deleted_bytes: IntCounterVec,
    /// Batches removed by retention.
    pub retention_deleted_batches: IntCounter,
    /// Retention passes run.
    pub retention_runs: IntCounter,
    /// RocksDB live SST bytes.
    pub rocksdb_sst_bytes: IntGauge,
    /// RocksDB bytes pending compaction.
    pub rocksdb_pending_compaction_bytes: IntGauge,
    /// 1 while RocksDB stops writes.
    pub rocksdb_write_stopped: IntGauge,
    /// RocksDB memtable bytes.
    pub rocksdb_memtable_bytes: IntGauge,
    /// Storage errors, by operation.
    pub storage_errors: IntCounterVec,
    /// Build info.
    pub build_info: IntGaugeVec,
    /// Loaded plugins (always 1), by kind, name, version and ABI.
    pub plugin_info: IntGaugeVec,
    /// Failed plugin calls, by kind.
    pub plugin_errors: IntCounterVec,
    /// Read-cache hits, by strategy.
    pub cache_hits: IntCounterVec,
    /// Read-cache misses, by strategy.
    pub cache_misses: IntCounterVec,
    /// Batches evicted from the read cache, by strategy.
    pub cache_evictions: IntCounterVec,
    /// Bytes held by the read cache, by strategy.
    pub cache_bytes: IntGaugeVec,
    /// Configured read-cache bound, by strategy.
    pub cache_capacity_bytes: IntGaugeVec,
    /// Raft groups on this node, by role (leader, follower, candidate, learner).
    pub raft_groups: IntGaugeVec,
    /// Leader elections observed by this node's groups, by group kind.
    pub raft_leader_changes: IntCounterVec,
    /// Locks with a holder or a waiter.
    pub locks: IntGauge,
    /// Lock holders (shared locks may have several).
    pub lock_holders: IntGauge,
    /// Waiters queued for locks.
    pub lock_waiters: IntGauge,
    /// Lock grants (replicated count, the same on every broker).
    pub lock_grants: IntCounter,
    /// Leases that ended without a release (replicated count).
    pub lock_expirations: IntCounter,
    /// Plugin failures while expiring leases and sessions (this replica).
    pub coord_expiry_failures: IntCounter,
    /// From an acquire request arriving at this broker to its grant.
    pub lock_acquire_seconds: Histogram,
    /// Members per consumer group.
    pub group_members: IntGaugeVec,
    /// Generation per consumer group.
    pub group_generation: IntGaugeVec,
    /// Rebalances per consumer group (replicated count).
    pub group_rebalances: IntCounterVec,
    /// Members removed because their session ended (replicated count).
    pub group_sessions_expired: IntCounter,
    /// Groups removed after the retention with no member (replicated count).
    pub groups_expired: IntCounter,
    /// Committed offset per group and partition.
    pub group_committed_offset: IntGaugeVec,
    /// Records after the committed offset, per group and partition (from
    /// the partition's leader only).
    pub group_lag: IntGaugeVec,
    /// Term of the metadata group.
    pub raft_metadata_term: IntGauge,
    /// Entries in local Raft logs not yet applied, summed over groups.
    pub raft_apply_lag_entries: IntGauge,
    /// Entries a follower still lacks, summed over the groups this node leads.
    pub raft_replication_lag_entries: IntGauge,
    /// Snapshots installed on this node's groups.
    pub raft_snapshots_installed: IntCounter,
    /// Round-trip time of Raft calls to each peer.
    pub raft_peer_rtt_seconds: HistogramVec,
    /// Partitions this node leads with a replica out of sync.
    pub partitions_under_replicated: IntGauge,
    /// Partitions hosted here whose group has no leader.
    pub partitions_offline: IntGauge,
    /// Partitions this node leads, labelled with its node id (`broker`)
    /// so a dashboard names brokers, not scrape addresses.
    pub partition_leaders: IntGaugeVec,
    /// Partitions whose preferred leader is this node but that it does not
    /// lead (led elsewhere or leaderless).
    pub partitions_off_preferred_leader: IntGauge,
    /// Elections this node started as a partition's preferred leader.
    pub preferred_leader_elections: IntCounter,
    /// Those of them after which this node led the partition.
    pub preferred_leader_elections_won: IntCounter,
    /// Free bytes on the data directory's file system.
    pub disk_free_bytes: IntGauge,
    /// 1 while produces are refused for lack of disk space.
    pub disk_full: IntGauge,
    /// Requests refused or connections closed because a named limit was
    /// hit, by limit (one of [`REFUSED_LIMITS`]).
    pub limit_refusals: IntCounterVec,
    /// Bytes of request frames read and not yet answered, on all
    /// connections (bounded by `request_bytes_in_flight_max`).
    pub request_bytes_in_flight: IntGauge,
    /// Rebalance moves this broker ran, by outcome (`done`, `failed`).
    pub rebalance_moves: IntCounterVec,
    /// Moves of the running rebalance not done yet (0 when none runs).
    pub rebalance_moves_pending: IntGauge,
    /// Failed client authentications, by SASL mechanism (wrong password,
    /// unknown user, malformed or out-of-order messages).
    pub auth_failures: IntCounterVec,
    /// Requests (or partitions of one) refused by authorization, by
    /// operation (`tern_acl::Operation::name`).
    pub acl_denied: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let m = Metrics {
            requests: reg!(IntCounterVec::new(
                Opts::new("tern_requests_total", "Requests received, by API."),
                &["api"]
            )),
            request_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_request_errors_total",
                    "Requests or partitions within them that failed, by API and error code."
                ),
                &["api", "code"]
            )),
            request_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tern_request_duration_seconds",
                    "Time from request decode to response, by API (fetch includes long-poll wait)."
                )
                .buckets(latency_buckets.clone()),
                &["api"]
            )),
            kafka_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_kafka_requests_total",
                    "Kafka-protocol requests received, by API."
                ),
                &["api"]
            )),
            kafka_request_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_kafka_request_errors_total",
                    "Kafka-protocol requests or partitions within them that failed, by API and error."
                ),
                &["api", "error"]
            )),
            kafka_request_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tern_kafka_request_duration_seconds",
                    "Kafka-protocol request latency, by API (fetch includes long-poll wait)."
                )
                .buckets(latency_buckets.clone()),
                &["api"]
            )),
            kafka_protocol_violations: reg!(IntCounter::new(
                "tern_kafka_protocol_violations_total",
                "Kafka-protocol connections closed for a malformed or unsupported request."
            )),
            network_in_bytes: reg!(IntCounter::new(
                "tern_network_received_bytes_total",
                "Bytes of request frames read from clients."
            )),
            network_out_bytes: reg!(IntCounter::new(
                "tern_network_sent_bytes_total",
                "Bytes of response frames written to clients."
            )),
            connections: reg!(IntGauge::new(
                "tern_connections",
                "Open client connections."
            )),
            protocol_violations: reg!(IntCounter::new(
                "tern_protocol_violations_total",
                "Connections closed because of malformed or oversized frames."
            )),
            records_in: reg!(IntCounterVec::new(
                Opts::new("tern_records_in_total", "Records appended, by topic."),
                &["topic"]
            )),
            bytes_in: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_bytes_in_total",
                    "Record batch bytes appended, by topic."
                ),
                &["topic"]
            )),
            bytes_out: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_bytes_out_total",
                    "Record batch bytes served to consumers, by topic."
                ),
                &["topic"]
            )),
            append_group_batches: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "tern_storage_append_group_batches",
                    "Raft entries (record batches) written by one storage write (group commit size)."
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
            )),
            append_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "tern_storage_append_duration_seconds",
                    "Duration of one storage write, fsync included."
                )
                .buckets(latency_buckets.clone())
            )),
            log_start_offset: reg!(IntGaugeVec::new(
                Opts::new("tern_partition_log_start_offset", "First stored offset."),
                &["topic", "partition"]
            )),
            log_end_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "tern_partition_log_end_offset",
                    "Offset the next record will get (equals the high watermark on one node)."
                ),
                &["topic", "partition"]
            )),
            log_size_bytes: reg!(IntGaugeVec::new(
                Opts::new("tern_partition_size_bytes", "Stored record batch bytes."),
                &["topic", "partition"]
            )),
            topics: reg!(IntGauge::new("tern_topics", "Number of topics.")),
            partitions: reg!(IntGauge::new(
                "tern_partitions",
                "Number of partitions hosted by this node."
            )),
            replicas_unopened: reg!(IntGauge::new(
                "tern_replicas_unopened",
                "Replicas assigned to this node that failed to open (retried with backoff)."
            )),
            replica_open_failures: reg!(IntCounter::new(
                "tern_replica_open_failures_total",
                "Failed attempts to open a replica assigned to this node."
            )),
            retention_deleted_bytes: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_retention_deleted_bytes_total",
                    "Record batch bytes removed by retention."
                ),
                &["topic"]
            )),
            retention_deleted_batches: reg!(IntCounter::new(
                "tern_retention_deleted_batches_total",
                "Record batches removed by retention."
            )),
            retention_runs: reg!(IntCounter::new(
                "tern_retention_runs_total",
                "Retention passes completed."
            )),
            rocksdb_sst_bytes: reg!(IntGauge::new(
                "tern_rocksdb_sst_files_bytes",
                "Size of RocksDB's live SST files."
            )),
            rocksdb_pending_compaction_bytes: reg!(IntGauge::new(
                "tern_rocksdb_pending_compaction_bytes",
                "Estimated bytes RocksDB still has to compact."
            )),
            rocksdb_write_stopped: reg!(IntGauge::new(
                "tern_rocksdb_write_stopped",
                "1 while RocksDB stops writes (stall), else 0."
            )),
            rocksdb_memtable_bytes: reg!(IntGauge::new(
                "tern_rocksdb_memtable_bytes",
                "Bytes in RocksDB memtables."
            )),
            storage_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_storage_errors_total",
                    "Storage failures, by operation."
                ),
                &["operation"]
            )),
            build_info: reg!(IntGaugeVec::new(
                Opts::new("tern_build_info", "Always 1; labels carry the version."),
                &["version"]
            )),
            plugin_info: reg!(IntGaugeVec::new(
                Opts::new("tern_plugin_info", "Loaded plugins (always 1)."),
                &["kind", "name", "version", "abi"]
            )),
            plugin_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_plugin_errors_total",
                    "Plugin calls that failed or panicked, by kind."
                ),
                &["kind"]
            )),
            cache_hits: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_read_cache_hits_total",
                    "Batches served from the read cache."
                ),
                &["strategy"]
            )),
            cache_misses: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_read_cache_misses_total",
                    "Batches the read cache did not hold (read from RocksDB)."
                ),
                &["strategy"]
            )),
            cache_evictions: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_read_cache_evictions_total",
                    "Batches evicted from the read cache."
                ),
                &["strategy"]
            )),
            cache_bytes: reg!(IntGaugeVec::new(
                Opts::new("tern_read_cache_bytes", "Bytes held by the read cache."),
                &["strategy"]
            )),
            cache_capacity_bytes: reg!(IntGaugeVec::new(
                Opts::new(
                    "tern_read_cache_capacity_bytes",
                    "Configured read-cache bound."
                ),
                &["strategy"]
            )),
            raft_groups: reg!(IntGaugeVec::new(
                Opts::new("tern_raft_groups", "Raft groups on this node, by role."),
                &["role"]
            )),
            raft_leader_changes: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_raft_leader_changes_total",
                    "Leader changes seen by this node's Raft groups, by group kind."
                ),
                &["group"]
            )),
            locks: reg!(IntGauge::new(
                "tern_locks",
                "Locks with a holder or a waiter."
            )),
            lock_holders: reg!(IntGauge::new(
                "tern_lock_holders",
                "Lock holders (a shared lock may have several)."
            )),
            lock_waiters: reg!(IntGauge::new(
                "tern_lock_waiters",
                "Requests queued for a lock."
            )),
            lock_grants: reg!(IntCounter::new(
                "tern_lock_grants_total",
                "Lock grants since the cluster began (replicated: every broker reports the same)."
            )),
            lock_expirations: reg!(IntCounter::new(
                "tern_lock_expirations_total",
                "Leases that ended without a release (replicated: every broker reports the same)."
            )),
            coord_expiry_failures: reg!(IntCounter::new(
                "tern_coordination_expiry_failures_total",
                "Lock plugin or balancer failures while expiring leases and sessions, on this \
                 broker's replica since it started (expiry goes on for every other lock and group)."
            )),
            lock_acquire_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "tern_lock_acquire_seconds",
                    "From an acquire request arriving at this broker to its grant (waiting included)."
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 20).expect("valid buckets"))
            )),
            group_members: reg!(IntGaugeVec::new(
                Opts::new("tern_group_members", "Members of each consumer group."),
                &["group"]
            )),
            group_generation: reg!(IntGaugeVec::new(
                Opts::new("tern_group_generation", "Generation of each consumer group."),
                &["group"]
            )),
            group_rebalances: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_group_rebalances_total",
                    "Rebalances of each consumer group (replicated: every broker reports the same)."
                ),
                &["group"]
            )),
            group_sessions_expired: reg!(IntCounter::new(
                "tern_group_sessions_expired_total",
                "Group members removed because they stopped heartbeating (replicated)."
            )),
            groups_expired: reg!(IntCounter::new(
                "tern_groups_expired_total",
                "Consumer groups removed with their offsets after GROUP_RETENTION_MS with no member, \
                 commit or reset (replicated)."
            )),
            group_committed_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "tern_group_committed_offset",
                    "Committed offset (next to consume) per group and partition."
                ),
                &["group", "topic", "partition"]
            )),
            group_lag: reg!(IntGaugeVec::new(
                Opts::new(
                    "tern_group_lag_records",
                    "Records after the committed offset per group and partition, reported by the partition's leader."
                ),
                &["group", "topic", "partition"]
            )),
            raft_metadata_term: reg!(IntGauge::new(
                "tern_raft_metadata_term",
                "Current term of the metadata Raft group."
            )),
            raft_apply_lag_entries: reg!(IntGauge::new(
                "tern_raft_apply_lag_entries",
                "Entries in this node's Raft logs not yet applied, summed over groups."
            )),
            raft_replication_lag_entries: reg!(IntGauge::new(
                "tern_raft_replication_lag_entries",
                "Entries followers still lack, summed over the groups this node leads."
            )),
            raft_snapshots_installed: reg!(IntCounter::new(
                "tern_raft_snapshots_installed_total",
                "Snapshots installed on this node's Raft groups (catch-up of a far-behind replica)."
            )),
            raft_peer_rtt_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "tern_raft_peer_rtt_seconds",
                    "Round-trip time of Raft calls to each peer."
                )
                .buckets(latency_buckets),
                &["peer"]
            )),
            partitions_under_replicated: reg!(IntGauge::new(
                "tern_partitions_under_replicated",
                "Partitions led by this node with a replica out of sync."
            )),
            partitions_offline: reg!(IntGauge::new(
                "tern_partitions_offline",
                "Partitions hosted here whose Raft group has no leader."
            )),
            disk_free_bytes: reg!(IntGauge::new(
                "tern_disk_free_bytes",
                "Free bytes on the data directory's file system."
            )),
            disk_full: reg!(IntGauge::new(
                "tern_disk_full",
                "1 while produces are refused because free space is under --min-free-bytes."
            )),
            limit_refusals: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_limit_refusals_total",
                    "Requests refused or connections closed because a named limit was hit, by limit."
                ),
                &["limit"]
            )),
            rebalance_moves: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_rebalance_moves_total",
                    "Partition moves of a rebalance this broker ran (as the partition's leader), by outcome."
                ),
                &["outcome"]
            )),
            rebalance_moves_pending: reg!(IntGauge::new(
                "tern_rebalance_moves_pending",
                "Moves of the running rebalance not done yet (0 when none runs)."
            )),
            request_bytes_in_flight: reg!(IntGauge::new(
                "tern_request_bytes_in_flight",
                "Bytes of request frames read and not yet answered, on all client connections."
            )),
            auth_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_auth_failures_total",
                    "Failed client authentications, by SASL mechanism."
                ),
                &["mechanism"]
            )),
            acl_denied: reg!(IntCounterVec::new(
                Opts::new(
                    "tern_acl_denied_total",
                    "Requests, or partitions of a produce, refused by authorization, by operation."
                ),
                &["operation"]
            )),
            partition_leaders: reg!(IntGaugeVec::new(
                Opts::new(
                    "tern_partition_leaders",
                    "Partitions this broker leads (broker = its node id)."
                ),
                &["broker"]
            )),
            partitions_off_preferred_leader: reg!(IntGauge::new(
                "tern_partitions_off_preferred_leader",
                "Partitions whose preferred leader is this broker but that it does not lead."
            )),
            preferred_leader_elections: reg!(IntCounter::new(
                "tern_preferred_leader_elections_total",
                "Elections this broker started to lead partitions it is the preferred leader of."
            )),
            preferred_leader_elections_won: reg!(IntCounter::new(
                "tern_preferred_leader_elections_won_total",
                "Preferred-leader elections after which this broker led the partition."
            )),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            m.registry
                .register(Box::new(pc))
                .expect("process collector registered once");
        }
        for api in tern_protocol::ApiKey::ALL {
            m.requests.with_label_values(&[api.name()]);
        }
        for operation in ["append", "read", "retention"] {
            m.storage_errors.with_label_values(&[operation]);
        }
        for kind in ["lock", "balancer", "cache"] {
            m.plugin_errors.with_label_values(&[kind]);
        }
        for role in ["leader", "follower", "candidate", "learner"] {
            m.raft_groups.with_label_values(&[role]);
        }
        for group in ["metadata", "partition"] {
            m.raft_leader_changes.with_label_values(&[group]);
        }
        for limit in REFUSED_LIMITS
            .into_iter()
            .chain(tern_raft::coord::LIMIT_LABELS)
        {
            m.limit_refusals.with_label_values(&[limit]);
        }
        m.auth_failures
            .with_label_values(&[tern_auth::SCRAM_SHA_256]);
        for outcome in ["done", "failed"] {
            m.rebalance_moves.with_label_values(&[outcome]);
        }
        for operation in tern_acl::Operation::ALL {
            m.acl_denied.with_label_values(&[operation.name()]);
        }
        m
    }

    /// Hooks through which the replication layer reports storage writes and
    /// peer round trips.
    pub fn raft_hooks(&self) -> tern_raft::RaftHooks {
        let batches = self.append_group_batches.clone();
        let seconds = self.append_seconds.clone();
        let rtt = self.raft_peer_rtt_seconds.clone();
        let installed = self.raft_snapshots_installed.clone();
        tern_raft::RaftHooks {
            on_log_write: std::sync::Arc::new(move |entries, secs| {
                batches.observe(entries as f64);
                seconds.observe(secs);
            }),
            on_peer_rtt: std::sync::Arc::new(move |peer, secs| {
                rtt.with_label_values(&[&peer.to_string()]).observe(secs);
            }),
            on_snapshot_installed: std::sync::Arc::new(move || installed.inc()),
        }
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

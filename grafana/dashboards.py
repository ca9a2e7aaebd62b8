#!/usr/bin/env python3
"""Tern's Grafana dashboards as code. Writes grafana/dashboards/*.json.

    python3 grafana/dashboards.py            # regenerate
    python3 grafana/dashboards.py --check    # fail if the JSON is out of date

Every query uses only metrics Tern exports (broker/ternd/src/metrics.rs);
scripts/check-dashboards.sh evaluates each one against a real Prometheus
scraping a live broker. `$__rate_interval` is Grafana's; the check replaces it.
"""
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"


def panel(title, exprs, unit="short", kind="timeseries", legend="{{instance}}"):
    if isinstance(exprs, str):
        exprs = [(exprs, legend)]
    return {
        "type": kind,
        "title": title,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": e, "legendFormat": l, "datasource": DS}
            for i, (e, l) in enumerate(exprs)
        ],
    }


def dashboard(uid, title, rows):
    panels, y = [], 0
    for row in rows:
        x = 0
        width = 24 // len(row)
        for p in row:
            p = dict(p, id=len(panels) + 1, gridPos={"x": x, "y": y, "w": width, "h": 8})
            panels.append(p)
            x += width
        y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": ["tern"],
        "timezone": "utc",
        "schemaVersion": 38,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {},
        }]},
        "panels": panels,
    }


def quantile(q, metric, by):
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{R}])))"


DASHBOARDS = [
    dashboard("tern-overview", "Tern / Cluster overview", [
        [
            panel("Records in /s by topic", [(f"sum by (topic) (rate(tern_records_in_total[{R}]))", "{{topic}}")], "ops"),
            panel("Bytes in and out /s", [
                (f"sum(rate(tern_bytes_in_total[{R}]))", "in"),
                (f"sum(rate(tern_bytes_out_total[{R}]))", "out"),
            ], "Bps"),
        ],
        [
            panel("Requests /s by API", [(f"sum by (api) (rate(tern_requests_total[{R}]))", "{{api}}")], "reqps"),
            panel("Request latency p99 by API", [(quantile(0.99, "tern_request_duration_seconds", "api"), "{{api}}")], "s"),
        ],
        [
            panel("Errors /s by API and code", [(f"sum by (api, code) (rate(tern_request_errors_total[{R}]))", "{{api}} {{code}}")], "reqps"),
            panel("Open connections", [("sum by (instance) (tern_connections)", "{{instance}}")]),
            panel("Topics and partitions", [
                ("max(tern_topics)", "topics"),
                ("sum(tern_partitions)", "partition replicas"),
                ("sum(tern_replicas_unopened)", "replicas failing to open (retried)"),
            ]),
        ],
        [
            panel("Partition leaders per broker", [("sum by (broker) (tern_partition_leaders)", "broker {{broker}}")]),
            panel("Preferred leaders", [
                ("sum(tern_partitions_off_preferred_leader)", "partitions off their preferred leader"),
                (f"sum(rate(tern_preferred_leader_elections_total[{R}])) * 60", "elections started /min"),
                (f"sum(rate(tern_preferred_leader_elections_won_total[{R}])) * 60", "elections won /min"),
            ]),
            panel("Under-replicated partitions", [("sum(tern_partitions_under_replicated)", "under-replicated")]),
            panel("Rebalance", [
                ("max(tern_rebalance_moves_pending)", "moves left"),
                (f"sum by (outcome) (rate(tern_rebalance_moves_total[{R}])) * 60", "moves {{outcome}} /min"),
            ]),
        ],
        [
            panel("Authentication failures /s", [(f"sum by (mechanism) (rate(tern_auth_failures_total[{R}]))", "{{mechanism}}")], "ops"),
            panel("Requests denied by ACLs /s", [(f"sum by (operation) (rate(tern_acl_denied_total[{R}]))", "{{operation}}")], "ops"),
        ],
        [
            panel("Kafka requests /s by API", [(f"sum by (api) (rate(tern_kafka_requests_total[{R}]))", "{{api}}")], "reqps"),
            panel("Kafka request latency p99 by API", [(quantile(0.99, "tern_kafka_request_duration_seconds", "api"), "{{api}}")], "s"),
            panel("Kafka errors /s and closed connections", [
                (f"sum by (api, error) (rate(tern_kafka_request_errors_total[{R}]))", "{{api}} {{error}}"),
                (f"sum(rate(tern_kafka_protocol_violations_total[{R}]))", "malformed requests"),
            ], "reqps"),
        ],
    ]),
    dashboard("tern-replication", "Tern / Partitions and replication", [
        [
            panel("Leaders per broker", [('sum by (instance) (tern_raft_groups{role="leader"})', "{{instance}}")]),
            panel("Raft groups by role", [("sum by (role) (tern_raft_groups)", "{{role}}")]),
            panel("Under-replicated and offline partitions", [
                ("sum(tern_partitions_under_replicated)", "under-replicated"),
                ("sum(tern_partitions_offline)", "offline"),
            ]),
        ],
        [
            panel("Leader changes /s", [(f"sum by (group) (rate(tern_raft_leader_changes_total[{R}]))", "{{group}}")], "ops"),
            panel("Metadata group term", [("max(tern_raft_metadata_term)", "term")]),
            panel("Snapshots installed /s (catch-up)", [(f"sum(rate(tern_raft_snapshots_installed_total[{R}]))", "installed")], "ops"),
        ],
        [
            panel("Replication lag (entries followers lack)", [("sum by (instance) (tern_raft_replication_lag_entries)", "{{instance}}")]),
            panel("Apply lag (entries not yet applied)", [("sum by (instance) (tern_raft_apply_lag_entries)", "{{instance}}")]),
            panel("Peer round trip p99", [(quantile(0.99, "tern_raft_peer_rtt_seconds", "instance, peer"), "{{instance}} → {{peer}}")], "s"),
        ],
    ]),
    # Coordination state is replicated: every broker reports the same
    # values, so panels take max() across brokers instead of sum().
    dashboard("tern-coordination", "Tern / Coordination: locks and consumer groups", [
        [
            panel("Locks, holders and waiters", [
                ("max(tern_locks)", "locks"),
                ("max(tern_lock_holders)", "holders"),
                ("max(tern_lock_waiters)", "waiters"),
            ]),
            panel("Lock grants and lease expirations /s", [
                (f"max(rate(tern_lock_grants_total[{R}]))", "grants"),
                (f"max(rate(tern_lock_expirations_total[{R}]))", "expired leases"),
            ], "ops"),
            panel("Lock acquire time p50 / p99 (waiting included)", [
                (f"histogram_quantile(0.5, sum by (le) (rate(tern_lock_acquire_seconds_bucket[{R}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(tern_lock_acquire_seconds_bucket[{R}])))", "p99"),
            ], "s"),
        ],
        [
            panel("Lock and group requests /s", [(f'sum by (api) (rate(tern_requests_total{{api=~"lock|group"}}[{R}]))', "{{api}}")], "reqps"),
            panel("Lock and group request latency p99", [(quantile(0.99, 'tern_request_duration_seconds', "api") .replace("tern_request_duration_seconds_bucket[", 'tern_request_duration_seconds_bucket{api=~"lock|group"}['), "{{api}}")], "s"),
        ],
        [
            panel("Group members", [("max by (group) (tern_group_members)", "{{group}}")]),
            panel("Group generation", [("max by (group) (tern_group_generation)", "{{group}}")]),
            panel("Rebalances and expired sessions", [
                ("max by (group) (tern_group_rebalances_total)", "rebalances {{group}}"),
                ("max(tern_group_sessions_expired_total)", "sessions expired"),
            ]),
        ],
        [
            panel("Consumer lag (records) by group", [("sum by (group) (tern_group_lag_records)", "{{group}}")]),
            panel("Consumer lag by partition", [("max by (group, topic, partition) (tern_group_lag_records)", "{{group}} {{topic}}/{{partition}}")]),
            panel("Committed offset by partition", [("max by (group, topic, partition) (tern_group_committed_offset)", "{{group}} {{topic}}/{{partition}}")]),
        ],
    ]),
    dashboard("tern-storage", "Tern / Storage, retention and read cache", [
        [
            panel("Partition size", [("sum by (topic) (tern_partition_size_bytes)", "{{topic}}")], "bytes"),
            panel("Log end offset by partition", [("tern_partition_log_end_offset", "{{topic}}/{{partition}}")]),
            panel("Log start offset by partition", [("tern_partition_log_start_offset", "{{topic}}/{{partition}}")]),
        ],
        [
            panel("Storage write latency p50 / p99 (fsync included)", [
                (f"histogram_quantile(0.5, sum by (le) (rate(tern_storage_append_duration_seconds_bucket[{R}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate(tern_storage_append_duration_seconds_bucket[{R}])))", "p99"),
            ], "s"),
            panel("Raft entries per storage write (group commit)", [
                (f"sum(rate(tern_storage_append_group_batches_sum[{R}])) / sum(rate(tern_storage_append_group_batches_count[{R}]))", "mean"),
            ]),
            panel("Storage errors /s", [(f"sum by (operation) (rate(tern_storage_errors_total[{R}]))", "{{operation}}")], "ops"),
        ],
        [
            panel("RocksDB", [
                ("sum(tern_rocksdb_sst_files_bytes)", "SST bytes"),
                ("sum(tern_rocksdb_memtable_bytes)", "memtable bytes"),
                ("sum(tern_rocksdb_pending_compaction_bytes)", "pending compaction"),
            ], "bytes"),
            panel("RocksDB write stopped", [("max(tern_rocksdb_write_stopped)", "stopped")]),
            panel("Retention deleted bytes /s", [(f"sum by (topic) (rate(tern_retention_deleted_bytes_total[{R}]))", "{{topic}}")], "Bps"),
        ],
        [
            panel("Read cache hit ratio", [(
                f"sum by (strategy) (rate(tern_read_cache_hits_total[{R}])) / "
                f"(sum by (strategy) (rate(tern_read_cache_hits_total[{R}])) + sum by (strategy) (rate(tern_read_cache_misses_total[{R}])))",
                "{{strategy}}")], "percentunit"),
            panel("Read cache bytes / capacity", [
                ("sum by (strategy) (tern_read_cache_bytes)", "{{strategy}} used"),
                ("sum by (strategy) (tern_read_cache_capacity_bytes)", "{{strategy}} capacity"),
            ], "bytes"),
            panel("Read cache evictions /s", [(f"sum by (strategy) (rate(tern_read_cache_evictions_total[{R}]))", "{{strategy}}")], "ops"),
        ],
    ]),
    dashboard("tern-plugins-process", "Tern / Plugins and process", [
        [
            panel("Loaded plugins", [("tern_plugin_info", "{{kind}} {{name}} {{version}} (ABI {{abi}})")], kind="table"),
            panel("Plugin call failures /s", [(f"sum by (kind) (rate(tern_plugin_errors_total[{R}]))", "{{kind}}")], "ops"),
        ],
        [
            panel("CPU", [(f"rate(process_cpu_seconds_total{{job=\"tern\"}}[{R}])", "{{instance}}")], "percentunit"),
            panel("Resident memory", [("process_resident_memory_bytes{job=\"tern\"}", "{{instance}}")], "bytes"),
            panel("Open file descriptors", [("process_open_fds{job=\"tern\"}", "{{instance}}")]),
        ],
        [
            panel("Protocol violations /s", [(f"sum(rate(tern_protocol_violations_total[{R}]))", "closed connections")], "ops"),
            panel("Build", [("tern_build_info", "{{version}}")], kind="table"),
        ],
    ]),
]


def main():
    check = "--check" in sys.argv
    OUT.mkdir(exist_ok=True)
    stale = []
    for d in DASHBOARDS:
        path = OUT / f"{d['uid']}.json"
        text = json.dumps(d, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        sys.exit("out of date (run python3 grafana/dashboards.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()

//! Background retention: periodically deletes the oldest batches of each
//! partition that are past the topic's time limit or over its size limit.
//! Never touches a partition's newest offsets' numbering: offsets only grow.
//! Each replica trims its own copy; before deleting, it moves its Raft
//! group's purge point past the deleted entries (so Raft never needs them:
//! a replica that falls behind gets a snapshot with the retained data).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Broker, Partition};

/// Runs retention every `retention_check_ms` until `shutdown`.
pub async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(broker.config().retention_check_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        run_once(&broker).await;
    }
}

/// How long retention waits for Raft to snapshot and purge.
const PURGE_WAIT: Duration = Duration::from_secs(5);

/// Moves the partition's Raft purge point up to `upto` (snapshot first:
/// openraft purges only what a snapshot covers) and returns the first Raft
/// index still in Raft's log. A replica that later needs a purged entry
/// receives a snapshot carrying the retained batches instead.
async fn purge_raft_log(partition: &Partition, upto: u64) -> u64 {
    let raft = partition.raft();
    let purged =
        |m: &openraft::RaftMetrics<u64, openraft::BasicNode>| m.purged.map_or(0, |l| l.index + 1);
    if purged(&raft.metrics().borrow()) > upto {
        return upto + 1;
    }
    let deadline = tokio::time::Instant::now() + PURGE_WAIT;
    if raft.trigger().snapshot().await.is_ok() {
        let mut m = raft.metrics();
        while m.borrow().snapshot.is_none_or(|s| s.index < upto) {
            if tokio::time::timeout_at(deadline, m.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        if raft.trigger().purge_log(upto).await.is_ok() {
            while purged(&m.borrow()) <= upto {
                if tokio::time::timeout_at(deadline, m.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let first_kept = purged(&raft.metrics().borrow());
    first_kept
}

/// One retention pass over every partition.
pub async fn run_once(broker: &Broker) {
    let now_ms = now_ms();
    for (topic, partition) in broker.all_partitions() {
        let cfg = &topic.settings;
        if cfg.retention_ms < 0 && cfg.retention_bytes < 0 {
            continue;
        }
        let log = partition.log();
        let Some(cut) = log.retention_cut(now_ms, cfg.retention_ms, cfg.retention_bytes) else {
            continue;
        };
        // Raft must forget the entries before retention deletes them.
        let keep_from = purge_raft_log(&partition, cut.saturating_sub(1)).await;
        let outcome = tokio::task::block_in_place(|| {
            log.apply_retention(now_ms, cfg.retention_ms, cfg.retention_bytes, keep_from)
        });
        match outcome {
            Ok(out) if out.batches > 0 => {
                let m = broker.metrics();
                m.retention_deleted_batches.inc_by(out.batches);
                m.retention_deleted_bytes
                    .with_label_values(&[&topic.name])
                    .inc_by(out.bytes);
                info!(topic = %topic.name, partition = partition.index(), batches = out.batches,
                      bytes = out.bytes, log_start = out.log_start, "retention removed batches");
            }
            Ok(_) => {}
            Err(e) => {
                broker
                    .metrics()
                    .storage_errors
                    .with_label_values(&["retention"])
                    .inc();
                warn!(topic = %topic.name, partition = partition.index(), error = %e, "retention failed");
            }
        }
    }
    broker.metrics().retention_runs.inc();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

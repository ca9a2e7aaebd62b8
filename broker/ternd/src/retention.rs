//! Background retention: periodically deletes the oldest batches of each
//! partition that are past the topic's time limit or over its size limit.
//! Never touches a partition's newest offsets' numbering: offsets only grow.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;

/// Runs retention every `retention_check_ms` until `shutdown`.
pub async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(broker.config().retention_check_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let b = broker.clone();
        let pass = tokio::task::spawn_blocking(move || run_once(&b)).await;
        if let Err(e) = pass {
            warn!(error = %e, "retention pass failed");
        }
    }
}

/// One retention pass over every partition.
pub fn run_once(broker: &Broker) {
    let now_ms = now_ms();
    for (topic, partition) in broker.all_partitions() {
        let cfg = &topic.settings;
        if cfg.retention_ms < 0 && cfg.retention_bytes < 0 {
            continue;
        }
        match partition.log().apply_retention(
            now_ms,
            cfg.retention_ms,
            cfg.retention_bytes,
            partition.retention_keep_from(),
        ) {
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

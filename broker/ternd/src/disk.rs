//! Watches free space on the data directory's file system. Below
//! `--min-free-bytes` the broker refuses produces with `disk_full` (a clear,
//! non-retriable error) *before* RocksDB runs out of space — RocksDB turns
//! read-only after a failed write, which only a restart clears — and accepts
//! them again by itself once space returns.
//!
//! This module only measures and flips the store's flag; it never writes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Broker;

/// How often free space is measured.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Runs until `shutdown`.
pub async fn watch(broker: Arc<Broker>, shutdown: CancellationToken) {
    let min_free = broker.config().min_free_bytes;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_full = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let available = match broker.store().available_bytes() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot measure free disk space");
                continue;
            }
        };
        let full = available < min_free;
        broker.metrics().disk_free_bytes.set(available as i64);
        broker.metrics().disk_full.set(i64::from(full));
        if full != was_full {
            if full {
                error!(
                    available,
                    min_free, "disk almost full: refusing produces until space returns"
                );
            } else {
                info!(
                    available,
                    min_free, "disk space back: accepting produces again"
                );
            }
            was_full = full;
        }
        broker.store().set_disk_full(full);
    }
}

//! `tern bench produce --rate N`: the open-loop produce benchmark.
//!
//! Record `i` of the run is due at `start + i / N`, whatever happened to
//! the records before it, and its latency is measured from that *scheduled*
//! time to its acknowledgement. A closed loop (the default `tern bench
//! produce`) only sends when earlier sends let it, so a slow broker slows
//! the sender and the waiting it causes is never measured ("coordinated
//! omission"); here it is: a record that could not be sent on time carries
//! the delay in its latency. The generator itself falling behind its
//! schedule is measured too and, past [`BEHIND_SCHEDULE_MAX`], the run is
//! marked invalid (the requested load was not offered).
//!
//! Owns the schedule, the per-record accounting and the report. Must never
//! measure from the moment a record was handed to the producer (that is
//! the closed-loop error this mode exists to avoid), and never drops a
//! record that is overdue: a sender that was held up sends what is due at
//! once, and each of those records counts its wait.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::RngCore;
use tern_client::{Delivery, Producer, ProducerConfig, ProducerRecord};
use tokio::sync::mpsc;

use crate::bench::BenchArgs;

/// A run whose sender fell further than this behind its schedule did not
/// offer the requested load: its figures are reported as invalid. Well
/// above the timer's granularity (about 1 ms) and a scheduler hiccup on a
/// busy machine, well below anything a reader would call "keeping up".
pub(crate) const BEHIND_SCHEDULE_MAX: Duration = Duration::from_millis(100);

/// Records accepted by the producer whose acknowledgement is not yet
/// accounted, per producer: the producer's own queue limit. A sender that
/// reaches it waits, and that wait shows as lag behind the schedule.
const UNACCOUNTED_RECORDS_MAX: usize = 100_000;

/// When record `i` of a run at `rate` records per second is due, counted
/// from the start of the run.
pub(crate) fn due(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Records in a run of `secs` seconds at `rate` per second (at least one).
pub(crate) fn records_for(secs: f64, rate: u64) -> u64 {
    ((secs.max(0.0) * rate as f64).round() as u64).max(1)
}

/// The accounting of one part of a run (a sender or an acknowledgement
/// collector); parts are merged for the report. All times are offsets from
/// the start of the run.
pub(crate) struct Accounting {
    /// Acknowledgement time minus scheduled time, in microseconds.
    latency: Histogram<u64>,
    /// Send time minus scheduled time, in microseconds.
    behind: Histogram<u64>,
    /// The worst lag, exactly (the histogram rounds).
    behind_max: Duration,
    acked: u64,
    last_ack: Duration,
}

impl Accounting {
    pub(crate) fn new() -> Accounting {
        Accounting {
            latency: histogram(),
            behind: histogram(),
            behind_max: Duration::ZERO,
            acked: 0,
            last_ack: Duration::ZERO,
        }
    }

    /// A record due at `due` was handed to the producer at `sent`.
    pub(crate) fn sent(&mut self, due: Duration, sent: Duration) {
        let behind = sent.saturating_sub(due);
        self.behind.saturating_record(micros(behind));
        self.behind_max = self.behind_max.max(behind);
    }

    /// A record due at `due` was acknowledged at `acked`: its latency runs
    /// from when it was due, not from when it was sent.
    pub(crate) fn acked(&mut self, due: Duration, acked: Duration) {
        self.latency
            .saturating_record(micros(acked.saturating_sub(due)));
        self.acked += 1;
        self.last_ack = self.last_ack.max(acked);
    }

    pub(crate) fn merge(&mut self, other: &Accounting) {
        self.latency.add(&other.latency).expect("same bounds");
        self.behind.add(&other.behind).expect("same bounds");
        self.behind_max = self.behind_max.max(other.behind_max);
        self.acked += other.acked;
        self.last_ack = self.last_ack.max(other.last_ack);
    }

    pub(crate) fn report(&self, rate: u64, size: usize) -> Report {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let secs = self.last_ack.as_secs_f64().max(1e-9);
        let behind_max = self.behind_max;
        Report {
            rate_requested: rate,
            records: self.acked,
            size,
            elapsed_s: self.last_ack.as_secs_f64(),
            rate_achieved: self.acked as f64 / secs,
            mb_per_s: self.acked as f64 * size as f64 / secs / 1e6,
            p50_ms: ms(&self.latency, 0.5),
            p90_ms: ms(&self.latency, 0.9),
            p99_ms: ms(&self.latency, 0.99),
            p999_ms: ms(&self.latency, 0.999),
            max_ms: self.latency.max() as f64 / 1000.0,
            behind_p99_ms: ms(&self.behind, 0.99),
            behind_max_ms: behind_max.as_secs_f64() * 1000.0,
            valid: behind_max <= BEHIND_SCHEDULE_MAX,
        }
    }
}

/// Latency and lag histograms: microseconds, 3 significant digits, up to
/// [`RECORDED_MAX`]; a longer time is recorded as that.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, micros(RECORDED_MAX), 3).expect("valid histogram bounds")
}

/// Longest latency or lag told apart from longer ones.
const RECORDED_MAX: Duration = Duration::from_secs(3600);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The figures of one open-loop run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) rate_requested: u64,
    pub(crate) records: u64,
    pub(crate) size: usize,
    /// From the start of the run to the last acknowledgement.
    pub(crate) elapsed_s: f64,
    /// Records acknowledged per second over `elapsed_s`.
    pub(crate) rate_achieved: f64,
    pub(crate) mb_per_s: f64,
    /// Latency from scheduled time to acknowledgement.
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// How late records were handed to the producer.
    pub(crate) behind_p99_ms: f64,
    pub(crate) behind_max_ms: f64,
    /// False when the sender fell more than [`BEHIND_SCHEDULE_MAX`] behind.
    pub(crate) valid: bool,
}

impl Report {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if !self.valid {
            eprintln!(
                "WARNING: sending fell {:.1} ms behind its schedule (limit {} ms), held back by \
                 the client itself or by the producer's full queue of {} unacknowledged records: \
                 {} records/s were not offered and these figures are INVALID",
                self.behind_max_ms,
                BEHIND_SCHEDULE_MAX.as_millis(),
                UNACCOUNTED_RECORDS_MAX,
                self.rate_requested
            );
        }
        if json {
            let mut v = serde_json::to_value(self)?;
            v["mode"] = "open-loop".into();
            return Ok(crate::output::print_json(&v)?);
        }
        println!(
            "{}produce at {}/s (open loop): {} msgs of {} B in {:.2} s: {:.0} msgs/s, {:.1} MB/s, \
             latency from schedule p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms; \
             sender behind schedule p99 {:.2} ms, max {:.2} ms",
            if self.valid { "" } else { "INVALID (sender fell behind) " },
            self.rate_requested,
            self.records,
            self.size,
            self.elapsed_s,
            self.rate_achieved,
            self.mb_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.behind_p99_ms,
            self.behind_max_ms,
        );
        Ok(())
    }
}

/// Runs the open-loop benchmark: `records` records at `rate` per second,
/// shared by `a.producers` producers (producer `k` sends records
/// `k, k + P, k + 2P, …` of the one schedule).
pub(crate) async fn produce(
    broker: &str,
    a: &BenchArgs,
    rate: u64,
    records: u64,
    json: bool,
) -> anyhow::Result<()> {
    let client = crate::connect(broker).await?;
    let partitions = client
        .topic(&a.topic)
        .await
        .context("read the bench topic")?
        .partitions
        .len()
        .max(1) as u32;
    let producers = a.producers.max(1) as u64;
    // Every producer connects before the clock starts.
    let mut ready = Vec::new();
    for _ in 0..producers {
        let client = crate::connect(broker).await?;
        ready.push(Producer::new(
            client,
            ProducerConfig {
                batch_bytes_max: a.batch.max(1) * (a.size + 26) + 64,
                linger: Duration::from_millis(a.linger_ms),
                in_flight_per_partition_max: a.in_flight,
                queue_records_max: UNACCOUNTED_RECORDS_MAX,
                ..Default::default()
            },
        ));
    }
    let mut payload = vec![0u8; a.size * 64 + 1];
    rand::rng().fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (k, producer) in ready.into_iter().enumerate() {
        let plan = Plan {
            topic: a.topic.clone(),
            size: a.size,
            payload: payload.clone(),
            rate,
            first: k as u64,
            stride: producers,
            records,
            partitions,
        };
        tasks.push(tokio::spawn(run_producer(producer, plan, start)));
    }
    let mut total = Accounting::new();
    for t in tasks {
        total.merge(&t.await.context("producer task")??);
    }
    total.report(rate, a.size).print(json)
}

/// One producer's share of the schedule.
struct Plan {
    topic: String,
    size: usize,
    payload: Bytes,
    rate: u64,
    first: u64,
    stride: u64,
    records: u64,
    partitions: u32,
}

/// Sends this producer's records on schedule; one collector per partition
/// awaits their acknowledgements in order (a partition acknowledges in
/// order, so the collector sees each within a wake-up of its true time and
/// a slow partition does not delay the accounting of another).
async fn run_producer(producer: Producer, p: Plan, start: Instant) -> anyhow::Result<Accounting> {
    let mut queues = Vec::new();
    let mut collectors = Vec::new();
    for _ in 0..p.partitions {
        let (tx, rx) = mpsc::channel::<(Duration, Delivery)>(UNACCOUNTED_RECORDS_MAX);
        queues.push(tx);
        collectors.push(tokio::spawn(collect(rx, start)));
    }
    // The sender sleeps on its own thread: the runtime's timer rounds a
    // wake-up to the next millisecond tick (and more under load), which at
    // a low rate would add about a millisecond to every latency; a thread
    // sleep overshoots by tens of microseconds.
    let runtime = tokio::runtime::Handle::current();
    let sending = producer.clone();
    let (mut acc, all_sent) = tokio::task::spawn_blocking(move || {
        send_on_schedule(&runtime, &sending, &p, start, &queues)
    })
    .await
    .context("sender thread")??;
    producer.flush().await?;
    for c in collectors {
        acc.merge(&c.await.context("collector task")??);
    }
    anyhow::ensure!(all_sent, "acknowledgement collector ended early");
    Ok(acc)
}

/// The sender's loop, on a thread of its own; returns its accounting and
/// whether every record was sent (false: a collector ended on a failed
/// record, whose error the collector reports). Dropping `queues` on return
/// ends the collectors once they have drained.
fn send_on_schedule(
    runtime: &tokio::runtime::Handle,
    producer: &Producer,
    p: &Plan,
    start: Instant,
    queues: &[mpsc::Sender<(Duration, Delivery)>],
) -> anyhow::Result<(Accounting, bool)> {
    let mut acc = Accounting::new();
    let span = (p.payload.len() - p.size).max(1);
    let mut i = p.first;
    while i < p.records {
        let due_at = due(i, p.rate);
        if let Some(wait) = due_at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let offset = (i as usize).wrapping_mul(7919) % span;
        let partition = (i % u64::from(p.partitions)) as u32;
        let record = ProducerRecord::new(p.topic.clone(), p.payload.slice(offset..offset + p.size))
            .with_partition(partition);
        // Returns at once unless the producer's queue is full (then the
        // wait shows as lag behind the schedule).
        let delivery = runtime.block_on(producer.enqueue(record))?;
        acc.sent(due_at, start.elapsed());
        if queues[partition as usize]
            .blocking_send((due_at, delivery))
            .is_err()
        {
            return Ok((acc, false));
        }
        i += p.stride;
    }
    Ok((acc, true))
}

async fn collect(
    mut rx: mpsc::Receiver<(Duration, Delivery)>,
    start: Instant,
) -> anyhow::Result<Accounting> {
    let mut acc = Accounting::new();
    while let Some((due_at, delivery)) = rx.recv().await {
        delivery.await.context("produce failed")?;
        acc.acked(due_at, start.elapsed());
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_schedule_spaces_records_evenly_from_the_start() {
        assert_eq!(due(0, 200), Duration::ZERO);
        assert_eq!(due(1, 200), 5 * MS);
        assert_eq!(due(200, 200), Duration::from_secs(1));
        assert_eq!(due(3, 1_000_000), Duration::from_micros(3));
        // No overflow far into a fast run, and a zero rate does not divide by zero.
        assert_eq!(due(u64::MAX, 1), Duration::from_nanos(u64::MAX));
        assert_eq!(due(2, 0), Duration::from_secs(2));
        assert_eq!(records_for(2.0, 200), 400);
        assert_eq!(records_for(0.0, 200), 1);
    }

    /// The coordinated-omission correction: a record sent late (the sender
    /// was held up) counts its wait in its latency.
    #[test]
    fn latency_runs_from_the_scheduled_time_not_the_send_time() {
        let mut acc = Accounting::new();
        // Due at 0, 5 and 10 ms; the second was sent 20 ms late and all
        // three were acknowledged together at 30 ms.
        let rows = [(0, 0, 30), (5, 25, 30), (10, 25, 30)];
        for (due_ms, sent_ms, acked_ms) in rows {
            acc.sent(due_ms * MS, sent_ms * MS);
            acc.acked(due_ms * MS, acked_ms * MS);
        }
        let r = acc.report(200, 100);
        assert_eq!(r.records, 3);
        // Latencies 30, 25 and 20 ms, not the 30, 5 and 5 ms since sending.
        assert!((r.max_ms - 30.0).abs() < 0.05, "{r:?}");
        assert!((r.p50_ms - 25.0).abs() < 0.05, "{r:?}");
        assert!((r.behind_max_ms - 20.0).abs() < 0.05, "{r:?}");
        assert!(r.valid);
        assert!((r.elapsed_s - 0.030).abs() < 1e-9);
        assert!((r.rate_achieved - 100.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn an_ack_before_its_schedule_counts_as_zero_and_quantiles_are_ordered() {
        let mut acc = Accounting::new();
        acc.acked(10 * MS, 9 * MS);
        for i in 0..1000u64 {
            acc.acked(Duration::ZERO, Duration::from_micros(1000 + i));
        }
        let r = acc.report(1000, 10);
        assert_eq!(r.records, 1001);
        assert!(r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms);
        assert!(r.p99_ms <= r.p999_ms && r.p999_ms <= r.max_ms);
        assert!(r.p50_ms > 1.4 && r.p50_ms < 1.6, "{r:?}");
    }

    #[test]
    fn a_sender_far_behind_its_schedule_makes_the_run_invalid() {
        let mut on_time = Accounting::new();
        on_time.sent(Duration::ZERO, BEHIND_SCHEDULE_MAX);
        assert!(on_time.report(1, 1).valid);
        let mut late = Accounting::new();
        late.sent(Duration::ZERO, BEHIND_SCHEDULE_MAX + 10 * MS);
        assert!(!late.report(1, 1).valid);
        // Merging keeps the worst lag, the sum of records and the last ack.
        on_time.acked(Duration::ZERO, 3 * MS);
        late.acked(Duration::ZERO, 7 * MS);
        on_time.merge(&late);
        let r = on_time.report(1, 1);
        assert!(!r.valid);
        assert_eq!(r.records, 2);
        assert!((r.elapsed_s - 0.007).abs() < 1e-9);
    }
}

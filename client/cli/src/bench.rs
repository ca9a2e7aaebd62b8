//! `tern bench`: a load generator. Payloads are random (incompressible).
//! Prints a progress bar on a terminal and ends with one summary line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;
use std::collections::VecDeque;
use tern_client::{
    Admin, Client, ClientError, Consumer, ConsumerConfig, NewTopic, Offset, Producer,
    ProducerConfig, ProducerRecord,
};

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Produce N random records and report throughput and ack latency.
    /// With --rate: an open loop at a fixed rate, latency measured from each
    /// record's scheduled send time (coordinated omission corrected).
    #[command(after_help = "Examples:\n  \
        tern bench produce --topic bench --messages 1000000 --size 100 --batch 1000\n  \
        tern bench produce --topic bench --rate 50000 --duration 10 --output json\n  \
        tern bench produce --topic bench --rate 200 --batch 1 --duration 5   (round trips)")]
    Produce(BenchArgs),
    /// Consume N records from the beginning and report throughput.
    #[command(after_help = "Example:\n  tern bench consume --topic bench --messages 1000000")]
    Consume(BenchArgs),
    /// Uncontended lock acquire + release: rate and latency (also against
    /// etcd with --etcd, for comparison).
    #[command(after_help = "Examples:\n  \
        tern bench lock --clients 8 --operations 10000\n  \
        tern bench lock --etcd 127.0.0.1:2379")]
    Lock(crate::bench_coord::LockBenchArgs),
    /// Consumer-group rebalance time when a member joins or leaves cleanly.
    #[command(
        after_help = "Example:\n  tern bench rebalance --partitions 12 --members 3 --rounds 10"
    )]
    Rebalance(crate::bench_coord::RebalanceBenchArgs),
    /// A storm of new connections (TCP, TLS, SCRAM as the global flags
    /// say), each answering one request: set-up time and rate.
    #[command(after_help = "Example:\n  \
        tern --tls-ca certs/ca.pem --username alice bench connect --clients 1000 --concurrency 1000")]
    Connect(crate::bench_connect::ConnectBenchArgs),
}

#[derive(Args, Clone)]
pub(crate) struct BenchArgs {
    /// Topic (created with --partitions if missing).
    #[arg(long)]
    pub(crate) topic: String,
    /// Records in total.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// produce: open loop at this many records per second (record i is due
    /// at start + i/RATE; latency counts from that time). Without it the
    /// loop is closed: the next record goes when the producer takes it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// produce --rate: run this many seconds (RATE x SECS records) instead
    /// of --messages.
    #[arg(
        long,
        value_name = "SECS",
        requires = "rate",
        conflicts_with = "messages"
    )]
    duration: Option<f64>,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    pub(crate) size: usize,
    /// Records per batch (at most; with --rate a batch holds the records
    /// due within one linger time).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub(crate) producers: usize,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Batches in flight per partition per producer.
    #[arg(long, default_value_t = 16)]
    pub(crate) in_flight: usize,
    /// consume: start at the end of the log (tail new records) instead of
    /// the beginning.
    #[arg(long)]
    from_latest: bool,
    /// Linger in ms before a partial batch is sent.
    #[arg(long, default_value_t = 2)]
    pub(crate) linger_ms: u64,
    #[command(flatten)]
    out: crate::output::OutputArgs,
}

pub(crate) async fn run(broker: &str, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(a) => produce(broker, a).await,
        BenchCommand::Consume(a) => consume(broker, a).await,
        BenchCommand::Lock(a) => crate::bench_coord::run(broker, a).await,
        BenchCommand::Rebalance(a) => crate::bench_coord::rebalance(broker, a).await,
        BenchCommand::Connect(a) => crate::bench_connect::run(broker, a).await,
    }
}

fn bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template"),
    );
    pb
}

async fn ensure_topic(client: &Client, a: &BenchArgs) -> anyhow::Result<()> {
    if client.topic(&a.topic).await.is_ok() {
        return Ok(());
    }
    let mut t = NewTopic::new(a.partitions);
    t.retention_ms = Some(-1);
    match Admin::new(client.clone()).create_topic(&a.topic, t).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(tern_client::ErrorCode::TopicAlreadyExists) => Ok(()),
        Err(e) => Err(e).context("create bench topic"),
    }
}

async fn produce(broker: &str, a: BenchArgs) -> anyhow::Result<()> {
    if a.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let client = crate::connect(broker).await?;
    ensure_topic(&client, &a).await?;
    if let Some(rate) = a.rate {
        let records = a.duration.map_or(a.messages, |secs| {
            crate::bench_rate::records_for(secs, rate)
        });
        return crate::bench_rate::produce(broker, &a, rate, records, a.out.json()).await;
    }
    let pb = Arc::new(bar(a.messages));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.producers.max(1) {
        let share = a.messages / a.producers.max(1) as u64
            + u64::from((i as u64) < a.messages % a.producers.max(1) as u64);
        let (a, pb, broker) = (a.clone(), pb.clone(), broker.to_owned());
        tasks.push(tokio::spawn(async move {
            produce_share(&broker, &a, share, &pb).await
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for t in tasks {
        hist.add(t.await.context("producer task")??)
            .expect("same histogram bounds");
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    summary(
        "produce",
        a.messages,
        a.size,
        elapsed,
        Some(&hist),
        a.out.json(),
    )
}

async fn produce_share(
    broker: &str,
    a: &BenchArgs,
    n: u64,
    pb: &ProgressBar,
) -> anyhow::Result<Histogram<u64>> {
    let client = crate::connect(broker).await?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            // Room for `batch` records and their framing.
            batch_bytes_max: a.batch.max(1) * (a.size + 26) + 64,
            linger: Duration::from_millis(a.linger_ms),
            in_flight_per_partition_max: a.in_flight,
            ..Default::default()
        },
    );
    let mut payload = vec![0u8; a.size * 64 + 1];
    rand::rng().fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    // Acknowledgements of one partition arrive in order, so waiting on the
    // oldest first measures each within one batch of its true time, without
    // the wake-up storm of polling tens of thousands of futures.
    let mut pending = VecDeque::new();
    let window = (a.batch * a.in_flight.max(1) * 4).max(1000);
    let mut acked = 0u64;
    let mut on_ack = |r: (Instant, Result<tern_client::RecordMetadata, ClientError>),
                      hist: &mut Histogram<u64>|
     -> anyhow::Result<()> {
        r.1.context("produce failed")?;
        hist.record(r.0.elapsed().as_micros() as u64).ok();
        acked += 1;
        if acked.is_multiple_of(1024) {
            pb.inc(1024);
        }
        Ok(())
    };
    for i in 0..n {
        let start = (i as usize * 7919) % (payload.len() - a.size);
        let record = ProducerRecord::new(a.topic.clone(), payload.slice(start..start + a.size));
        let sent = Instant::now();
        let delivery = producer.enqueue(record).await?;
        pending.push_back((sent, delivery));
        while pending.len() >= window {
            let (sent, d) = pending.pop_front().expect("non-empty");
            on_ack((sent, d.await), &mut hist)?;
        }
    }
    producer.flush().await?;
    while let Some((sent, d)) = pending.pop_front() {
        on_ack((sent, d.await), &mut hist)?;
    }
    pb.inc(acked % 1024);
    Ok(hist)
}

async fn consume(broker: &str, a: BenchArgs) -> anyhow::Result<()> {
    if a.rate.is_some() || a.duration.is_some() {
        anyhow::bail!("--rate and --duration apply to bench produce only");
    }
    let client = crate::connect(broker).await?;
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            max_bytes: 16 * 1024 * 1024,
            partition_max_bytes: 4 * 1024 * 1024,
            ..Default::default()
        },
    );
    let start = if a.from_latest {
        Offset::Latest
    } else {
        Offset::Earliest
    };
    consumer.assign_all(&a.topic, start).await?;
    let pb = bar(a.messages);
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    let mut got = 0u64;
    let mut bytes = 0u64;
    while got < a.messages {
        let poll_started = Instant::now();
        let records = consumer.poll().await?;
        if records.is_empty() && started.elapsed() > Duration::from_secs(30) && got == 0 {
            anyhow::bail!("no records in {} after 30 s", a.topic);
        }
        hist.record(poll_started.elapsed().as_micros() as u64).ok();
        got += records.len() as u64;
        bytes += records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
            .sum::<u64>();
        pb.inc(records.len() as u64);
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    let size = bytes.checked_div(got).map_or(a.size, |s| s as usize);
    summary(
        "consume (latency = one fetch round)",
        got,
        size,
        elapsed,
        Some(&hist),
        a.out.json(),
    )
}

fn summary(
    what: &str,
    messages: u64,
    size: usize,
    elapsed: Duration,
    hist: Option<&Histogram<u64>>,
    json: bool,
) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    let rate = messages as f64 / secs;
    let mb_per_s = messages as f64 * size as f64 / secs / 1e6;
    if json {
        let mode = what.split_whitespace().next().unwrap_or(what);
        crate::output::print_json(&serde_json::json!({
            "mode": format!("closed-loop {mode}"),
            "records": messages,
            "size": size,
            "elapsed_s": secs,
            "rate_achieved": rate,
            "mb_per_s": mb_per_s,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
        }))?;
        return Ok(());
    }
    println!(
        "{what}: {messages} msgs of {size} B in {secs:.2} s: {rate:.0} msgs/s, {mb_per_s:.1} MB/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
    );
    Ok(())
}

//! `tern bench connect`: a storm of new connections, each one connecting
//! (TCP, then TLS and SCRAM when the global flags ask for them) and
//! answering one Metadata request, with at most `--concurrency` at once.
//! Measures what a client pays to get a working connection and how a
//! broker copes when many arrive together (after a restart, a deploy).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;

#[derive(Args, Clone)]
pub(crate) struct ConnectBenchArgs {
    /// Connections in total.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
}

/// Sets up `--clients` connections and reports the time of each (connect
/// to the first answered request) and of the whole storm.
pub(crate) async fn run(broker: &str, a: ConnectBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.clients > 0 && a.concurrency > 0,
        "--clients and --concurrency must be > 0"
    );
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let gate = gate.clone();
        let broker = broker.to_owned();
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("semaphore open");
            let t0 = Instant::now();
            let client = crate::connect(&broker).await?;
            client
                .refresh_metadata(None)
                .await
                .context("first request on the new connection")?;
            // Kept open until every connection is set up: a storm, not a
            // sequence of short visits.
            anyhow::Ok((t0.elapsed(), client))
        });
    }
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    let mut open = Vec::with_capacity(a.clients);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done.context("connect task")? {
            Ok((took, client)) => {
                hist.record(took.as_micros().max(1) as u64)
                    .expect("histogram range");
                open.push(client);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let total = started.elapsed();
    drop(open);
    let ms = |q: f64| Duration::from_micros(hist.value_at_quantile(q)).as_secs_f64() * 1e3;
    println!(
        "connect: {} connections ({} at once) in {:.2} s: {:.0} connections/s, \
         per connection p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} failed",
        hist.len(),
        a.concurrency,
        total.as_secs_f64(),
        hist.len() as f64 / total.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(1.0),
        failed,
    );
    match first_error {
        Some(e) => Err(e.context(format!("{failed} of {} connections failed", a.clients))),
        None => Ok(()),
    }
}

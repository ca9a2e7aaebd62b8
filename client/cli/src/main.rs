//! `tern`: the command-line client of the Tern broker.

mod bench;
mod bench_coord;
mod cluster;
mod consume;
mod group;
mod lock;
mod produce;
mod topic;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_client::Client;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Command-line client for the Tern broker"
)]
struct Cli {
    /// Seed brokers, comma-separated HOST:PORT list.
    #[arg(
        long,
        global = true,
        env = "TERN_BROKER",
        default_value = "127.0.0.1:4650"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, reassign, verify and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// List, add and remove brokers.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Produce records read from stdin, one per line.
    Produce(produce::ProduceArgs),
    /// Print records to stdout, one per line.
    Consume(consume::ConsumeArgs),
    /// Distributed locks: acquire, run a command under a lock, list.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Consumer groups: list, describe (lag), reset offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Load generator: throughput and latency percentiles.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let connect = || async {
            Client::connect(&cli.broker)
                .await
                .with_context(|| format!("connect to {}", cli.broker))
        };
        let ok = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
        match cli.command {
            Command::Topic(c) => ok(topic::run(connect().await?, c).await),
            Command::Cluster(c) => ok(cluster::run(connect().await?, c).await),
            Command::Produce(a) => ok(produce::run(connect().await?, a).await),
            Command::Consume(a) => ok(consume::run(connect().await?, a).await),
            Command::Lock(c) => lock::run(connect().await?, c).await,
            Command::Group(c) => ok(group::run(connect().await?, c).await),
            Command::Bench(b) => ok(bench::run(&cli.broker, b).await),
        }
    })
}

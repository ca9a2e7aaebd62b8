//! `tern`: the command-line client of the Tern broker.

mod bench;
mod cluster;
mod consume;
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
    /// Load generator: throughput and latency percentiles.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
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
        match cli.command {
            Command::Topic(c) => topic::run(connect().await?, c).await,
            Command::Cluster(c) => cluster::run(connect().await?, c).await,
            Command::Produce(a) => produce::run(connect().await?, a).await,
            Command::Consume(a) => consume::run(connect().await?, a).await,
            Command::Bench(b) => bench::run(&cli.broker, b).await,
        }
    })
}

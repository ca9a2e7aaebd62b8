//! `tern`: the command-line client of the Tern broker.

mod bench;
mod bench_coord;
mod cert;
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
    /// PEM file of the cluster CA: connect over TLS, trusting brokers whose
    /// certificates it signed.
    #[arg(long, global = true, env = "TERN_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (`tern cert issue --client NAME`) for mutual
    /// TLS; its name is the principal the brokers see. Needs --tls-key.
    #[arg(long, global = true, env = "TERN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, global = true, env = "TERN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The client settings of the global flags, set once at start.
static CLIENT_CONFIG: std::sync::OnceLock<tern_client::ClientConfig> = std::sync::OnceLock::new();

/// Connects to `brokers` with the settings of the global flags (TLS...).
pub(crate) async fn connect(brokers: &str) -> anyhow::Result<Client> {
    let config = CLIENT_CONFIG.get().cloned().unwrap_or_default();
    Client::connect_with(brokers, config)
        .await
        .with_context(|| format!("connect to {brokers}"))
}

impl Cli {
    /// Client settings from the global flags.
    fn client_config(&self) -> anyhow::Result<tern_client::ClientConfig> {
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (Some(ca), cert, key) => Some(tern_client::ClientTls {
                ca: ca.clone(),
                identity: cert.clone().zip(key.clone()),
            }),
            (None, _, _) => anyhow::bail!("--tls-cert needs --tls-ca (the CA to trust)"),
        };
        Ok(tern_client::ClientConfig {
            tls,
            ..Default::default()
        })
    }
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
    /// Certificates for TLS: a cluster CA, broker and client certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
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
        let _ = CLIENT_CONFIG.set(cli.client_config()?);
        let connect = || connect(&cli.broker);
        let ok = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
        match cli.command {
            Command::Topic(c) => ok(topic::run(connect().await?, c).await),
            Command::Cluster(c) => ok(cluster::run(connect().await?, c).await),
            Command::Produce(a) => ok(produce::run(connect().await?, a).await),
            Command::Consume(a) => ok(consume::run(connect().await?, a).await),
            Command::Lock(c) => lock::run(connect().await?, c).await,
            Command::Group(c) => ok(group::run(connect().await?, c).await),
            Command::Bench(b) => ok(bench::run(&cli.broker, b).await),
            Command::Cert(c) => ok(cert::run(c)),
        }
    })
}

//! `ternd`: the Tern broker binary.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let flags = ternd::Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = ternd::Config::resolve(flags).context("resolve configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ternd")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let running = ternd::start(config.clone()).await?;
        tracing::info!(
            node = config.node_id,
            listen = %running.client_addr,
            metrics = %running.metrics_addr,
            data_dir = %config.data_dir.display(),
            durability = ?config.durability,
            "ternd ready"
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

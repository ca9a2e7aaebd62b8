//! `ternd`: the Tern broker binary.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Huge claimed allocations from untrusted input are reserved, not refused
/// (a refused allocation aborts the process): see `ternd::alloc`.
#[global_allocator]
static ALLOCATOR: ternd::alloc::ReserveLargeAllocations = ternd::alloc::ReserveLargeAllocations;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` is the whole cause chain on one line; returning the
            // error from main would print a backtrace when RUST_BACKTRACE
            // is set.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut flags = ternd::Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = flags.command.take();
    let config = ternd::Config::resolve(flags).context("resolve configuration")?;
    if let Some(ternd::config::Subcommand::Plugins(ternd::config::PluginsCommand::List)) = command {
        return list_plugins(&config.plugin_dir);
    }
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
        let stopped_by_itself = tokio::select! {
            _ = wait_for_signal() => false,
            _ = running.shutdown.cancelled() => true,
        };
        tracing::info!("shutting down");
        let refusal = running.broker.refusal();
        running.stop().await;
        match refusal {
            Some(reason) if stopped_by_itself => anyhow::bail!("{reason}"),
            _ => anyhow::Ok(()),
        }
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

/// `ternd plugins list`: every plugin file in the directory (or why it is
/// refused), then the built-in strategies (used for names no file provides).
fn list_plugins(dir: &std::path::Path) -> anyhow::Result<()> {
    println!("plugin directory: {}", dir.display());
    println!(
        "{:<10} {:<14} {:<8} {:<4} file",
        "kind", "name", "version", "abi"
    );
    let row = |i: &tern_plugin_host::PluginInfo| {
        println!(
            "{:<10} {:<14} {:<8} {:<4} {}",
            i.kind.name(),
            i.name,
            i.version,
            i.abi_version,
            i.path.display()
        )
    };
    let mut refused = 0;
    for entry in tern_plugin_host::scan(dir) {
        match entry {
            Ok(i) => row(&i),
            Err(e) => {
                refused += 1;
                println!("{:<10} {e}", "REFUSED");
            }
        }
    }
    for entry in tern_strategies::BUILTINS {
        let builtin =
            tern_plugin_host::Plugin::builtin(entry).context("inspect a built-in strategy")?;
        row(builtin.info());
    }
    if refused > 0 {
        println!("{refused} file(s) refused");
    }
    Ok(())
}

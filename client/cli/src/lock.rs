//! `tern lock ...`: distributed locks from the shell.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use tern_client::{Client, LockClient, LockGuard, LockMode, LockOptions};

#[derive(Subcommand)]
pub(crate) enum LockCommand {
    /// Acquire a lock and hold it until Ctrl-C (exits 1 if the lease is lost).
    Acquire {
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Run a command while holding a lock, like `flock` or `etcdctl lock`.
    /// The command gets the fencing token in `TERN_FENCING_TOKEN` (and the
    /// lock name in `TERN_LOCK_NAME`); if the lease is lost, the command is
    /// terminated. Exits with the command's status.
    Run {
        #[command(flatten)]
        lock: LockArgs,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List locks with their holders (token, lease left) and waiters.
    List,
}

#[derive(Args)]
pub(crate) struct LockArgs {
    /// Lock name.
    name: String,
    /// Lease, renewed while held (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Give up after waiting this long (default: wait as long as it takes).
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// Take a shared (read) lock; needs the read-write lock plugin.
    #[arg(long)]
    shared: bool,
}

impl LockArgs {
    async fn acquire(&self, locks: &LockClient) -> anyhow::Result<LockGuard> {
        let options = LockOptions {
            lease: self.lease,
            wait: self.wait,
            mode: if self.shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            },
        };
        let guard = locks
            .acquire_with(&self.name, options)
            .await
            .with_context(|| format!("acquire lock {:?}", self.name))?;
        eprintln!(
            "acquired lock {:?} with fencing token {}",
            self.name,
            guard.token()
        );
        Ok(guard)
    }
}

pub(crate) async fn run(client: Client, command: LockCommand) -> anyhow::Result<ExitCode> {
    let locks = LockClient::new(client);
    match command {
        LockCommand::Acquire { lock } => {
            let mut guard = lock.acquire(&locks).await?;
            println!("{}", guard.token());
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    guard.release().await.context("release")?;
                    eprintln!("released lock {:?}", lock.name);
                    Ok(ExitCode::SUCCESS)
                }
                _ = guard.lost() => {
                    eprintln!("lost lock {:?}: its lease ended", lock.name);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        LockCommand::Run { lock, command } => {
            let mut guard = lock.acquire(&locks).await?;
            let mut child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .env("TERN_FENCING_TOKEN", guard.token().to_string())
                .env("TERN_LOCK_NAME", &lock.name)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("run {:?}", command[0]))?;
            let status = tokio::select! {
                status = child.wait() => status.context("wait for the command")?,
                _ = guard.lost() => {
                    eprintln!("lost lock {:?}: its lease ended; stopping the command", lock.name);
                    child.kill().await.ok();
                    return Ok(ExitCode::FAILURE);
                }
            };
            guard.release().await.context("release")?;
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
                None => ExitCode::FAILURE,
            })
        }
        LockCommand::List => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            println!("lock\trole\towner\tmode\ttoken\tlease-left");
            for l in locks.list().await? {
                for h in &l.holders {
                    let left = Duration::from_millis(h.expires_ms.saturating_sub(now_ms));
                    println!(
                        "{}\tholder\t{:016x}\t{:?}\t{}\t{:.1}s",
                        l.name,
                        h.owner,
                        h.mode,
                        h.token,
                        left.as_secs_f64()
                    );
                }
                for w in &l.waiters {
                    println!("{}\twaiter\t{:016x}\t{:?}\t-\t-", l.name, w.owner, w.mode);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

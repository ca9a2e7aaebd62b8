//! `tern lock ...`: distributed locks from the shell.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use tern_client::{Client, LockClient, LockGuard, LockMode, LockOptions};

use crate::output::{print_json, OutputArgs};

#[derive(Subcommand)]
pub(crate) enum LockCommand {
    /// Acquire a lock and hold it until Ctrl-C (exits 1 if the lease is lost).
    #[command(after_help = "Examples:\n  \
        tern lock acquire nightly --lease 10s\n  \
        tern lock acquire config --shared --wait 5s")]
    Acquire {
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Run a command while holding a lock, like `flock` or `etcdctl lock`.
    /// The command gets the fencing token in `TERN_FENCING_TOKEN` (and the
    /// lock name in `TERN_LOCK_NAME`); if the lease is lost, the command is
    /// terminated. Exits with the command's status.
    #[command(after_help = "Example:\n  \
        tern lock run nightly --wait 1m -- sh -c './report.sh --fence \"$TERN_FENCING_TOKEN\"'")]
    Run {
        #[command(flatten)]
        lock: LockArgs,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List locks with their holders (token, lease left) and waiters.
    #[command(after_help = "Examples:\n  \
        tern lock list\n  \
        tern lock list --output json | jq 'select(.role == \"waiter\")'")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
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
        LockCommand::List { output } => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if !output.json() {
                println!("lock\trole\towner\tmode\ttoken\tlease-left");
            }
            for l in locks.list().await? {
                let holders = l.holders.iter().map(|h| ("holder", h));
                let waiters = l.waiters.iter().map(|w| ("waiter", w));
                for (role, h) in holders.chain(waiters) {
                    let holder = role == "holder";
                    // The lease end is on the replicated clock, close to
                    // wall-clock time: "left" is an estimate.
                    let left = Duration::from_millis(h.expires_ms.saturating_sub(now_ms));
                    if output.json() {
                        print_json(&json!({
                            "lock": l.name,
                            "role": role,
                            "owner": format!("{:016x}", h.owner),
                            "mode": format!("{:?}", h.mode).to_lowercase(),
                            "token": holder.then_some(h.token),
                            "lease_left_ms": holder.then_some(left.as_millis() as u64),
                        }))?;
                    } else if holder {
                        println!(
                            "{}\tholder\t{:016x}\t{:?}\t{}\t{:.1}s",
                            l.name,
                            h.owner,
                            h.mode,
                            h.token,
                            left.as_secs_f64()
                        );
                    } else {
                        println!("{}\twaiter\t{:016x}\t{:?}\t-\t-", l.name, h.owner, h.mode);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

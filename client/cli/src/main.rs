//! `tern`: the command-line client of the Tern broker.
//!
//! `main` owns how a command ends: success, or one line `Error: what: why`
//! on stderr and a non-zero status (never a backtrace: this is the user's
//! tool, not a developer's).

mod acl;
mod bench;
mod bench_connect;
mod bench_coord;
mod bench_rate;
mod cert;
mod cluster;
mod consume;
mod format;
mod group;
mod lock;
mod output;
mod produce;
mod profile;
mod topic;
mod user;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tern_client::{Client, ClientError};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Command-line client for the Tern broker",
    after_help = "Examples:\n  \
        tern topic create orders --partitions 6\n  \
        printf 'alice:first order\\n' | tern produce orders --key-separator :\n  \
        tern consume orders --from-beginning --format '%p/%o %k=%s\\n'\n  \
        tern --profile prod cluster brokers --output json\n\n\
        Brokers: --broker / TERN_BROKER, else --profile / TERN_PROFILE (see `tern profile`), \
        else 127.0.0.1:4650."
)]
struct Cli {
    /// Seed brokers, comma-separated HOST:PORT list (overrides --profile;
    /// default: the profile's, else 127.0.0.1:4650).
    #[arg(long, global = true, env = "TERN_BROKER")]
    broker: Option<String>,
    /// Take the brokers from this saved profile (`tern profile add`).
    #[arg(long, global = true, env = "TERN_PROFILE")]
    profile: Option<String>,
    /// How long to keep trying the brokers before giving up (a broker that
    /// is starting is retried meanwhile).
    #[arg(
        long,
        global = true,
        env = "TERN_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    connect_timeout: std::time::Duration,
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
    /// Authenticate as this user (SCRAM-SHA-256). The password comes from
    /// TERN_PASSWORD or --password-stdin, never from the command line.
    #[arg(long, global = true, env = "TERN_USERNAME")]
    username: Option<String>,
    /// Read the password from the first line of stdin: the login password
    /// of --username, or for `user add`/`user passwd` the new user's (log
    /// in with TERN_PASSWORD then).
    #[arg(long, global = true)]
    password_stdin: bool,
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
        .map_err(|e| match e {
            // Already names the brokers and the cause.
            ClientError::NoBrokerReachable { .. } => anyhow::Error::new(e),
            other => anyhow::Error::new(other).context(format!("connect to {brokers}")),
        })
}

impl Cli {
    /// The login password of --username: TERN_PASSWORD, else the first
    /// line of stdin with --password-stdin (unless that gives a new user's
    /// password).
    fn login_password(&self) -> anyhow::Result<Option<String>> {
        let Some(user) = &self.username else {
            return Ok(None);
        };
        if let Ok(password) = std::env::var("TERN_PASSWORD") {
            return Ok(Some(password));
        }
        let stdin_is_new_password =
            matches!(&self.command, Command::User(c) if c.reads_new_password());
        if self.password_stdin && !stdin_is_new_password {
            return user::read_stdin_line()
                .map(Some)
                .context("read the password from stdin");
        }
        anyhow::bail!(
            "--username {user} needs a password: set TERN_PASSWORD{}",
            if stdin_is_new_password {
                " (--password-stdin gives the new user's password)"
            } else {
                " or give --password-stdin"
            }
        )
    }

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
        let credentials = self.login_password()?.map(|password| {
            tern_client::Credentials::new(self.username.clone().unwrap_or_default(), password)
        });
        Ok(tern_client::ClientConfig {
            tls,
            bootstrap_timeout: self.connect_timeout,
            credentials,
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, reassign, verify, grow and delete topics.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern topic create orders --partitions 6\n  tern topic add-partitions orders --count 12\n  tern topic list --output json"
    )]
    Topic(topic::TopicCommand),
    /// List, add and remove brokers.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern cluster brokers\n  tern cluster remove-broker 3"
    )]
    Cluster(cluster::ClusterCommand),
    /// Produce records read from stdin (one per line, or split at
    /// --delimiter), or one record from --value-file.
    #[command(after_help = produce::EXAMPLES)]
    Produce(produce::ProduceArgs),
    /// Print records to stdout (values one per line, or as --format or
    /// --output json say).
    #[command(after_help = consume::EXAMPLES)]
    Consume(consume::ConsumeArgs),
    /// Distributed locks: acquire, run a command under a lock, list.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern lock run nightly --wait 1m -- ./report.sh\n  tern lock list"
    )]
    Lock(lock::LockCommand),
    /// Consumer groups: list, describe (lag), reset offsets.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern group describe billing\n  \
            tern group reset-offsets billing --topic orders --to-earliest --dry-run"
    )]
    Group(group::GroupCommand),
    /// Users that authenticate with SCRAM-SHA-256: add, passwd, remove, list.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern user add alice\n  tern --username admin user list"
    )]
    User(user::UserCommand),
    /// Authorization rules: who may do what (brokers with --authorization).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            tern acl add --principal billing --allow --operation produce --topic orders\n  \
            tern acl list"
    )]
    Acl(acl::AclCommand),
    /// Load generator: throughput and latency percentiles.
    #[command(
        subcommand,
        after_help = "Example:\n  tern bench produce --topic bench --messages 1000000 --size 100"
    )]
    Bench(bench::BenchCommand),
    /// Certificates for TLS: a cluster CA, broker and client certificates.
    #[command(
        subcommand,
        after_help = "Examples:\n  tern cert create-ca --dir certs\n  \
            tern cert issue --dir certs --node-id 1 --host 127.0.0.1"
    )]
    Cert(cert::CertCommand),
    /// Saved connection settings (like nats contexts), used with --profile.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            tern profile add prod --brokers b1:4650,b2:4650 --default\n  \
            tern --profile prod topic list\n\n\
            The file: $TERN_CONFIG, else $XDG_CONFIG_HOME/tern/config.toml, \
            else ~/.config/tern/config.toml."
    )]
    Profile(profile::ProfileCommand),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        tern completions bash > ~/.local/share/bash-completion/completions/tern\n  \
        tern completions zsh > \"${fpath[1]}/_tern\"\n  \
        tern completions fish > ~/.config/fish/completions/tern.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // Die quietly when the reader of stdout goes away (`tern lock list |
    // grep -q x`), like other Unix tools, instead of panicking in println!.
    // SAFETY: resetting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => {
            // The reader went away (`tern consume ... | head`): not a failure.
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}` is the whole cause chain on one line; returning the
            // error from main would print a backtrace when RUST_BACKTRACE
            // is set.
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that need no broker must not ask for a password.
    let client_config = match cli.command {
        Command::Completions { .. } | Command::Profile(_) | Command::Cert(_) => {
            tern_client::ClientConfig::default()
        }
        _ => cli.client_config()?,
    };
    let password_stdin = cli.password_stdin;
    // Commands that need no broker.
    let command = match cli.command {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write
            // (`tern completions bash | head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tern", &mut script);
            std::io::stdout().write_all(&script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Profile(c) => {
            profile::run(c)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Cert(c) => {
            cert::run(c)?;
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let _ = CLIENT_CONFIG.set(client_config);
    let brokers = profile::resolve_brokers(cli.broker.as_deref(), cli.profile.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let connect = || connect(&brokers);
        let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match command {
            Command::Topic(c) => ok(topic::run(connect().await?, c).await),
            Command::Cluster(c) => ok(cluster::run(connect().await?, c).await),
            Command::Produce(a) => ok(produce::run(connect().await?, a).await),
            Command::Consume(a) => ok(consume::run(connect().await?, a).await),
            Command::Lock(c) => lock::run(connect().await?, c).await,
            Command::Group(c) => ok(group::run(connect().await?, c).await),
            Command::User(c) => ok(user::run(connect().await?, c, password_stdin).await),
            Command::Acl(c) => ok(acl::run(connect().await?, c).await),
            Command::Bench(b) => ok(bench::run(&brokers, b).await),
            Command::Completions { .. } | Command::Profile(_) | Command::Cert(_) => {
                unreachable!("handled above")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand shows at least one example in `--help`.
    #[test]
    fn every_command_has_an_example_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let help = cmd
                .get_after_help()
                .or(cmd.get_after_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !help.contains("Example") || !help.contains("tern ") {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in the help of: {missing:?}");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

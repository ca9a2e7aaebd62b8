//! `tern user ...`: the users that authenticate with SCRAM-SHA-256, and how
//! the CLI reads passwords — never from its command line (where `ps` and
//! shell history would show them): from `TERN_PASSWORD`, a line of stdin
//! (`--password-stdin`), or a prompt that does not echo on a terminal.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tern_client::{Admin, Client};

use crate::output::{print_json, OutputArgs};

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user. The password is asked for (without echo) on a
    /// terminal, else read from the first line of stdin (or give
    /// --password-stdin); only a salted, derived credential is sent.
    #[command(after_help = "Examples:\n  \
        tern user add alice\n  \
        printf '%s\\n' \"$NEW_PASSWORD\" | TERN_PASSWORD=\"$ADMIN_PASSWORD\" tern --username admin user add alice --password-stdin")]
    Add {
        /// Username (printable ASCII, no spaces, at most 64 bytes).
        name: String,
    },
    /// Change a user's password (read as for `user add`).
    #[command(after_help = "Example:\n  tern --username admin user passwd alice")]
    Passwd {
        /// Username.
        name: String,
    },
    /// Delete a user.
    #[command(after_help = "Example:\n  tern user remove alice")]
    Remove {
        /// Username.
        name: String,
    },
    /// List the usernames.
    #[command(after_help = "Examples:\n  tern user list\n  tern user list --output json")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

impl UserCommand {
    /// Whether the command reads a new password (then `--password-stdin`
    /// gives that one, not the login password).
    pub(crate) fn reads_new_password(&self) -> bool {
        matches!(self, UserCommand::Add { .. } | UserCommand::Passwd { .. })
    }
}

/// Runs `command`; with `password_stdin`, a new password is the first line
/// of stdin even on a terminal.
pub(crate) async fn run(
    client: Client,
    command: UserCommand,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        UserCommand::Add { name } => {
            let password = new_password(&name, password_stdin)?;
            admin
                .upsert_user(&name, &password)
                .await
                .with_context(|| format!("create user {name:?}"))?;
            eprintln!("user {name:?} saved");
        }
        UserCommand::Passwd { name } => {
            let password = new_password(&name, password_stdin)?;
            admin
                .upsert_user(&name, &password)
                .await
                .with_context(|| format!("change the password of {name:?}"))?;
            eprintln!("password of {name:?} changed");
        }
        UserCommand::Remove { name } => {
            admin
                .delete_user(&name)
                .await
                .with_context(|| format!("delete user {name:?}"))?;
            eprintln!("user {name:?} deleted");
        }
        UserCommand::List { output } => {
            let names = admin.list_users().await.context("list users")?;
            for name in names {
                if output.json() {
                    print_json(&json!({ "user": name }))?;
                } else {
                    println!("{name}");
                }
            }
        }
    }
    Ok(())
}

/// The new password of `name`: asked twice without echo on a terminal
/// (unless `from_stdin`), else the first line of stdin.
fn new_password(name: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        return read_stdin_line().context("read the new password from stdin");
    }
    let first = prompt_hidden(&format!("New password for {name}: "))?;
    let again = prompt_hidden("Again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

/// The first line of stdin, without its line ending; an empty one is an
/// error (no password is empty).
pub(crate) fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read stdin")?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!line.is_empty(), "stdin has no password line");
    Ok(line)
}

/// Asks on stderr and reads a line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    let echo = EchoOff::new();
    let line = read_stdin_line();
    drop(echo);
    err.write_all(b"\n")?;
    line
}

/// Turns terminal echo off on stdin until dropped (restores the previous
/// settings).
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: `termios` is plain data; tcgetattr fills it or fails, and
        // only a filled one is used.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return EchoOff(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores settings tcgetattr returned.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}

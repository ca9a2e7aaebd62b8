//! Saved connection settings, like nats contexts: named profiles in a TOML
//! file (`$TERN_CONFIG`, else `$XDG_CONFIG_HOME/tern/config.toml`, else
//! `~/.config/tern/config.toml`), and `tern profile add|list|remove`.
//!
//! ```toml
//! default_profile = "prod"          # used when neither --broker nor --profile is given
//! [profiles.prod]
//! brokers = "b1:4650,b2:4650,b3:4650"
//! ```
//!
//! Which brokers a command talks to: `--broker` / `TERN_BROKER`, else the
//! profile named by `--profile` / `TERN_PROFILE`, else `default_profile`,
//! else `127.0.0.1:4650`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

/// Brokers used when nothing else names any.
pub(crate) const DEFAULT_BROKERS: &str = "127.0.0.1:4650";

/// The config file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// One saved profile.
#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    /// Seed brokers, comma-separated HOST:PORT list.
    brokers: String,
    /// Keys this version does not know (written by a newer one), kept when
    /// the file is rewritten.
    #[serde(flatten)]
    other: toml::Table,
}

/// Where the config file is, from the environment.
pub(crate) fn config_path() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var("TERN_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    // The XDG spec says relative values are invalid and to be ignored.
    if let Some(dir) = var("XDG_CONFIG_HOME").map(PathBuf::from) {
        if dir.is_absolute() {
            return Ok(dir.join("tern").join("config.toml"));
        }
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config/tern/config.toml")),
        None => bail!("cannot find the config file: set TERN_CONFIG or HOME"),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save(path: &Path, config: &Config) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("encode the config")?;
    // Write a sibling and rename it: a crash never leaves half a file.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// The seed brokers to use, by the precedence in the module doc.
pub(crate) fn resolve_brokers(
    broker: Option<&str>,
    profile: Option<&str>,
) -> anyhow::Result<String> {
    // An empty value (`TERN_BROKER=`) counts as unset, as in a shell.
    let broker = broker.filter(|v| !v.trim().is_empty());
    let profile = profile.filter(|v| !v.trim().is_empty());
    if let Some(b) = broker {
        return Ok(b.to_owned());
    }
    let path = config_path()?;
    let config = load(&path)?;
    let Some(name) = profile.or(config.default_profile.as_deref()) else {
        return Ok(DEFAULT_BROKERS.to_owned());
    };
    match config.profiles.get(name) {
        Some(p) => Ok(p.brokers.clone()),
        None => bail!(
            "no profile named {name:?} in {} (`tern profile list` shows them)",
            path.display()
        ),
    }
}

#[derive(Subcommand)]
pub(crate) enum ProfileCommand {
    /// Save (or replace) a profile.
    #[command(after_help = "Examples:\n  \
        tern profile add prod --brokers b1:4650,b2:4650,b3:4650 --default\n  \
        tern --profile prod topic list")]
    Add {
        /// Profile name.
        name: String,
        /// Seed brokers, comma-separated HOST:PORT list.
        #[arg(long)]
        brokers: String,
        /// Use it when no --broker or --profile is given.
        #[arg(long)]
        default: bool,
    },
    /// List profiles (`*` marks the default) and the file they live in.
    #[command(after_help = "Example:\n  tern profile list")]
    List,
    /// Delete a profile.
    #[command(after_help = "Example:\n  tern profile remove staging")]
    Remove {
        /// Profile name.
        name: String,
    },
}

pub(crate) fn run(command: ProfileCommand) -> anyhow::Result<()> {
    let path = config_path()?;
    let mut config = load(&path)?;
    match command {
        ProfileCommand::Add {
            name,
            brokers,
            default,
        } => {
            if brokers.trim().is_empty() {
                bail!("--brokers is empty");
            }
            let other = config
                .profiles
                .remove(&name)
                .map(|p| p.other)
                .unwrap_or_default();
            config
                .profiles
                .insert(name.clone(), Profile { brokers, other });
            if default {
                config.default_profile = Some(name.clone());
            }
            save(&path, &config)?;
            eprintln!("saved profile {name:?} in {}", path.display());
        }
        ProfileCommand::List => {
            eprintln!("profiles in {}", path.display());
            for (name, p) in &config.profiles {
                let mark = if config.default_profile.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {name}\t{}", p.brokers);
            }
        }
        ProfileCommand::Remove { name } => {
            if config.profiles.remove(&name).is_none() {
                bail!("no profile named {name:?} in {}", path.display());
            }
            if config.default_profile.as_deref() == Some(name.as_str()) {
                config.default_profile = None;
            }
            save(&path, &config)?;
            eprintln!("removed profile {name:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_of_a_profile_survive_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "default_profile = \"a\"\n[profiles.a]\nbrokers = \"h:1\"\ntoken = \"secret\"\n",
        )
        .unwrap();
        let config = load(&path).unwrap();
        save(&path, &config).unwrap();
        let again = load(&path).unwrap();
        assert_eq!(again.default_profile.as_deref(), Some("a"));
        assert_eq!(again.profiles["a"].brokers, "h:1");
        assert_eq!(again.profiles["a"].other["token"].as_str(), Some("secret"));
    }

    #[test]
    fn a_missing_file_is_an_empty_config_and_a_broken_one_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert!(load(&path).unwrap().profiles.is_empty());
        std::fs::write(&path, "profiles = 3").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("config.toml"), "{err}");
    }
}

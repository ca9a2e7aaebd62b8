//! `tern cert`: a cluster CA and the certificates of brokers and clients,
//! so TLS needs no openssl. Keys are written with mode 0600 and never
//! overwritten unless `--force`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use tern_tls::generate::{self, CertifiedPem};

/// `tern cert ...`
#[derive(Subcommand)]
pub enum CertCommand {
    /// Create a cluster CA: DIR/ca.pem (give it to every broker and client)
    /// and DIR/ca-key.pem (keep it secret: it mints identities).
    #[command(after_help = "Example:\n  tern cert create-ca --dir certs")]
    CreateCa {
        /// Directory for ca.pem and ca-key.pem (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "tern cluster CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a broker certificate (--node-id: proves the node id to peers and
    /// serves clients at each --host) or a client certificate (--client: its
    /// name is the principal), signed by the CA in --dir.
    #[command(after_help = "Examples:\n  \
        tern cert issue --dir certs --node-id 1 --host 127.0.0.1 --host broker1.example.com\n  \
        tern cert issue --dir certs --client alice")]
    Issue {
        /// Directory holding ca.pem and ca-key.pem; the new files go there too
        /// (node-N.pem / node-N-key.pem, or NAME.pem / NAME-key.pem).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Issue a broker certificate for this node id.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        node_id: Option<u64>,
        /// Host names or IP addresses clients use to reach the broker (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Issue a client certificate whose principal is NAME.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `tern cert` command.
pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa {
            dir,
            name,
            days,
            force,
        } => {
            let ca = generate::create_ca(&name, days)?;
            write_pair(&dir, "ca", &ca, force)?;
            println!("wrote {0}/ca.pem and {0}/ca-key.pem", dir.display());
        }
        CertCommand::Issue {
            dir,
            node_id,
            hosts,
            client,
            days,
            force,
        } => {
            let ca = CertifiedPem {
                cert: read(&dir.join("ca.pem"))?,
                key: read(&dir.join("ca-key.pem"))?,
            };
            let (stem, issued) = match (node_id, client) {
                (Some(id), None) => (
                    format!("node-{id}"),
                    generate::issue_node(&ca, id, &hosts, days)?,
                ),
                (None, Some(name)) => {
                    if !hosts.is_empty() {
                        bail!("--host applies to broker certificates (--node-id) only");
                    }
                    let issued = generate::issue_client(&ca, &name, days)?;
                    (name, issued)
                }
                _ => bail!("give exactly one of --node-id and --client"),
            };
            write_pair(&dir, &stem, &issued, force)?;
            println!("wrote {0}/{stem}.pem and {0}/{stem}-key.pem", dir.display());
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn write_pair(dir: &Path, stem: &str, pem: &CertifiedPem, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    write(&dir.join(format!("{stem}.pem")), &pem.cert, 0o644, force)?;
    write(&dir.join(format!("{stem}-key.pem")), &pem.key, 0o600, force)
}

fn write(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "write {}{}",
            path.display(),
            if force {
                ""
            } else {
                " (exists? --force overwrites)"
            }
        )
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

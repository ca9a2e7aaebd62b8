//! `tern cluster ...`: the brokers of the cluster.

use clap::Subcommand;
use tern_client::{Admin, Client};

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// List the brokers: node id, client address, whether it leads the
    /// metadata group.
    Brokers,
    /// Add a broker started with `ternd --join` (its node id and peer
    /// address, as listed in its --initial-cluster).
    AddBroker {
        /// Node id of the new broker.
        node_id: u32,
        /// Its peer (Raft) address, HOST:PORT.
        peer_addr: String,
    },
    /// Move every replica off a broker (keeping each partition's
    /// replication factor when another broker can take it), then remove it
    /// from the cluster. Stop its process afterwards.
    RemoveBroker {
        /// Node id of the broker to remove.
        node_id: u32,
    },
}

pub(crate) async fn run(client: Client, command: ClusterCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match command {
        ClusterCommand::Brokers => {
            let controller = client.controller().await?;
            println!("node\taddress\tmetadata-leader");
            for (id, addr) in client.brokers() {
                println!(
                    "{id}\t{addr}\t{}",
                    if id == controller { "yes" } else { "" }
                );
            }
        }
        ClusterCommand::AddBroker { node_id, peer_addr } => {
            admin.add_broker(node_id, &peer_addr).await?;
            println!("broker {node_id} joined the cluster");
        }
        ClusterCommand::RemoveBroker { node_id } => {
            admin.remove_broker(node_id).await?;
            println!("broker {node_id} left the cluster; its replicas moved; stop its process");
        }
    }
    Ok(())
}

//! `tern cluster ...`: the brokers of the cluster.

use clap::Subcommand;
use serde_json::json;
use tern_client::{Admin, Client};

use crate::output::{print_json, OutputArgs};

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// List the brokers: node id, client address, whether it leads the
    /// metadata group.
    #[command(after_help = "Examples:\n  \
        tern cluster brokers\n  \
        tern cluster brokers --output json | jq -r 'select(.metadata_leader).address'")]
    Brokers {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Add a broker started with `ternd --join` (its node id and peer
    /// address, as listed in its --initial-cluster).
    #[command(
        after_help = "Example (on the new host: ternd --node-id 4 --join ...):\n  \
        tern cluster add-broker 4 b4:4652"
    )]
    AddBroker {
        /// Node id of the new broker.
        node_id: u32,
        /// Its peer (Raft) address, HOST:PORT.
        peer_addr: String,
    },
    /// Move every replica off a broker (keeping each partition's
    /// replication factor when another broker can take it), then remove it
    /// from the cluster. The removed broker stops by itself about 5 s later
    /// (exit status non-zero, "removed from the cluster" in its log); to
    /// bring it back, start it empty with --join and add it again.
    #[command(after_help = "Example:\n  tern cluster remove-broker 3")]
    RemoveBroker {
        /// Node id of the broker to remove.
        node_id: u32,
    },
    /// Move leadership back to preferred leaders now. A partition's
    /// preferred leader is the first broker of its replica list; each
    /// broker campaigns at once for the partitions it is the preferred
    /// leader of that another broker leads (where its replica has caught
    /// up), and keeps retrying for 30 s. Brokers do this by themselves
    /// after a restart unless started with --auto-leader-balance=false.
    #[command(after_help = "Examples:\n  \
        tern cluster balance-leaders\n  \
        tern cluster balance-leaders --output json | jq .elections")]
    BalanceLeaders {
        #[command(flatten)]
        output: OutputArgs,
    },
}

pub(crate) async fn run(client: Client, command: ClusterCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match command {
        ClusterCommand::Brokers { output } => {
            let controller = client.controller().await?;
            if output.json() {
                for (id, addr) in client.brokers() {
                    print_json(&json!({
                        "node": id,
                        "address": addr,
                        "metadata_leader": id == controller,
                    }))?;
                }
                return Ok(());
            }
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
        ClusterCommand::BalanceLeaders { output } => {
            let balance = admin.balance_leaders().await?;
            if output.json() {
                print_json(&json!({
                    "not_preferred": balance.not_preferred(),
                    "elections": balance.elections(),
                    "brokers": balance.brokers.iter().map(|b| json!({
                        "node": b.node_id,
                        "not_preferred": b.not_preferred,
                        "elections": b.elections,
                    })).collect::<Vec<_>>(),
                    "unreachable": balance.unreachable.iter().map(|(node, error)| json!({
                        "node": node,
                        "error": error,
                    })).collect::<Vec<_>>(),
                }))?;
                return Ok(());
            }
            println!("node\tnot-preferred\telections");
            for b in &balance.brokers {
                println!("{}\t{}\t{}", b.node_id, b.not_preferred, b.elections);
            }
            for (node, error) in &balance.unreachable {
                eprintln!("warning: broker {node} could not be asked: {error}");
            }
            println!(
                "{} partition(s) not on their preferred leader; {} election(s) started",
                balance.not_preferred(),
                balance.elections()
            );
        }
        ClusterCommand::RemoveBroker { node_id } => {
            admin.remove_broker(node_id).await?;
            println!(
                "broker {node_id} left the cluster; its replicas moved; \
                 it stops by itself within seconds"
            );
        }
    }
    Ok(())
}

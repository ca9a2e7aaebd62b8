//! `tern cluster ...`: the brokers of the cluster.

use clap::Subcommand;
use serde_json::json;
use std::time::Duration;

use tern_client::{Admin, Client, PlanState, RebalanceOptions, RebalanceResponse};

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
    /// Move every replica off a broker (a rebalance that leaves it out of
    /// the placement: only its replicas move, each to where consistent
    /// hashing puts it among the others), then remove it from the cluster.
    /// Then stop the removed broker's process: it stops by itself only if
    /// it saw the membership that removes it ("removed from the cluster" in
    /// its log), and the others refuse it either way. To bring it back,
    /// start it empty with --join and add it again.
    #[command(after_help = "Example:\n  tern cluster remove-broker 3")]
    RemoveBroker {
        /// Node id of the broker to remove.
        node_id: u32,
        /// Longest wait for its replicas to move, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
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
    /// Move the replicas whose consistent-hash placement changed (after
    /// brokers joined, or racks changed) — about 1/N of them when the N-th
    /// broker joined — online, a few at a time. The plan is stored in the
    /// cluster: it survives failovers and resumes. Without --wait it
    /// returns once the plan is stored; --status shows progress.
    #[command(after_help = "Examples:\n  \
        tern cluster rebalance --dry-run\n  \
        tern cluster rebalance --max-concurrent-moves 4 --throttle 20000000 --wait\n  \
        tern cluster rebalance --status --output json\n  \
        tern cluster rebalance --cancel")]
    Rebalance {
        /// Only show the plan.
        #[arg(long, conflicts_with_all = ["status", "cancel"])]
        dry_run: bool,
        /// Show the last rebalance's progress.
        #[arg(long, conflicts_with = "cancel")]
        status: bool,
        /// Stop the running rebalance (moves under way finish).
        #[arg(long)]
        cancel: bool,
        /// Most moves at once, cluster-wide (default 2, at most 64).
        #[arg(long, default_value_t = 0)]
        max_concurrent_moves: u32,
        /// Replication bandwidth to new replicas, bytes per second per
        /// sending broker (default: unthrottled).
        #[arg(long, default_value_t = 0)]
        throttle: u64,
        /// Wait until every move is done, printing progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// One line on a plan: its state and progress.
fn summary(plan: &RebalanceResponse) -> String {
    if plan.state == PlanState::None {
        return "no rebalance has run".into();
    }
    let done = plan.moves.iter().filter(|m| m.done).count();
    let moved: usize = plan
        .moves
        .iter()
        .map(|m| m.to.iter().filter(|b| !m.from.contains(b)).count())
        .sum();
    let bytes: u64 = plan
        .moves
        .iter()
        .filter(|m| m.done)
        .map(|m| m.bytes * m.to.iter().filter(|b| !m.from.contains(b)).count() as u64)
        .sum();
    let share = if plan.replicas_total == 0 {
        0.0
    } else {
        100.0 * moved as f64 / plan.replicas_total as f64
    };
    format!(
        "rebalance {}: {:?}; {} partition moves ({moved} of {} replicas, {share:.1} %), \
         {done} done, {} left, {bytes} bytes copied; {} at once{}",
        plan.plan_id,
        plan.state,
        plan.moves.len(),
        plan.replicas_total,
        plan.moves.len() - done,
        plan.max_concurrent_moves,
        if plan.throttle_bytes_per_sec > 0 {
            format!(", throttled to {} B/s", plan.throttle_bytes_per_sec)
        } else {
            String::new()
        }
    )
}

fn print_plan(plan: &RebalanceResponse, json: bool) -> anyhow::Result<()> {
    if json {
        for m in &plan.moves {
            print_json(&json!({
                "plan": plan.plan_id,
                "topic": m.topic,
                "partition": m.partition,
                "from": m.from,
                "to": m.to,
                "done": m.done,
                "bytes": m.bytes,
                "failures": m.failures,
                "last_error": m.last_error,
            }))?;
        }
        print_json(&json!({
            "plan": plan.plan_id,
            "state": format!("{:?}", plan.state),
            "moves": plan.moves.len(),
            "done": plan.moves.iter().filter(|m| m.done).count(),
            "replicas_total": plan.replicas_total,
            "racks": plan.racks.iter().map(|(b, r)| json!({"node": b, "rack": r})).collect::<Vec<_>>(),
        }))?;
        return Ok(());
    }
    for m in &plan.moves {
        println!(
            "{}/{}\t{:?} -> {:?}\t{}{}",
            m.topic,
            m.partition,
            m.from,
            m.to,
            if m.done { "done" } else { "pending" },
            if m.last_error.is_empty() {
                String::new()
            } else {
                format!(" ({} failures, last: {})", m.failures, m.last_error)
            }
        );
    }
    if !plan.racks.is_empty() {
        let racks: Vec<String> = plan.racks.iter().map(|(b, r)| format!("{b}={r}")).collect();
        println!("racks: {}", racks.join(" "));
    }
    println!("{}", summary(plan));
    Ok(())
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
        ClusterCommand::Rebalance {
            dry_run,
            status,
            cancel,
            max_concurrent_moves,
            throttle,
            wait,
            output,
        } => {
            let plan = if status {
                admin.rebalance_status().await?
            } else if cancel {
                admin.cancel_rebalance().await?
            } else {
                admin
                    .rebalance(&RebalanceOptions {
                        dry_run,
                        max_concurrent_moves,
                        throttle_bytes_per_sec: throttle,
                        exclude: Vec::new(),
                    })
                    .await?
            };
            if !wait || plan.state != PlanState::Running {
                return print_plan(&plan, output.json());
            }
            if !output.json() {
                println!("{}", summary(&plan));
            }
            loop {
                let now = admin
                    .wait_rebalance(plan.plan_id, Duration::from_secs(5))
                    .await;
                match now {
                    Ok(done) => return print_plan(&done, output.json()),
                    Err(tern_client::ClientError::Timeout(_)) => {
                        if !output.json() {
                            println!("{}", summary(&admin.rebalance_status().await?));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        ClusterCommand::RemoveBroker {
            node_id,
            timeout_secs,
        } => {
            admin
                .remove_broker(node_id, Duration::from_secs(timeout_secs))
                .await?;
            println!(
                "broker {node_id} left the cluster; its replicas moved; \
                 stop its process (the other brokers refuse it now)"
            );
        }
    }
    Ok(())
}

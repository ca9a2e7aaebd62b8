//! `tern topic ...`: create, list, describe, verify, reassign, add partitions,
//! delete.

use clap::Subcommand;
use serde_json::json;
use tern_client::{Admin, Client, NewTopic, TopicInfo};

use crate::output::{print_json, OutputArgs};

#[derive(Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    #[command(after_help = "Examples:\n  \
        tern topic create orders --partitions 6\n  \
        tern topic create audit --replication-factor 3 --retention-ms 604800000")]
    Create {
        /// Topic name ([A-Za-z0-9._-], up to 249 characters).
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Copies of each partition (capped by the number of brokers).
        #[arg(long, default_value_t = 3)]
        replication_factor: u16,
        /// Delete records older than this many ms (-1 = keep forever;
        /// default: the broker's default).
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<i64>,
        /// Keep each partition under this many bytes (default: unlimited).
        #[arg(long)]
        retention_bytes: Option<i64>,
    },
    /// List topics.
    #[command(after_help = "Examples:\n  \
        tern topic list\n  \
        tern topic list --output json | jq -r .name")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a topic's partitions: leader, replicas, in-sync replicas, offsets.
    #[command(after_help = "Examples:\n  \
        tern topic describe orders\n  \
        tern topic describe orders --output json | jq '.partitions[].log_end'")]
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Read every partition from each of its replicas directly and compare
    /// them byte for byte (waits up to --wait-secs for followers to catch
    /// up); exits non-zero if any replica differs.
    #[command(after_help = "Example:\n  tern topic verify-replicas orders --wait-secs 60")]
    VerifyReplicas {
        /// Topic name.
        name: String,
        /// How long replicas may take to converge.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Move a partition's replicas to other brokers (online: the new ones
    /// catch up before the old ones leave).
    #[command(
        after_help = "Example:\n  tern topic reassign orders --partition 0 --replicas 1,2,4"
    )]
    Reassign {
        /// Topic name.
        name: String,
        /// The partition.
        #[arg(long)]
        partition: u32,
        /// Node ids of the brokers that will hold it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        replicas: Vec<u32>,
    },
    /// Grow a topic to --count partitions in all, online. --count is the new
    /// TOTAL (like `kafka-topics --alter --partitions`), not the number to
    /// add; partitions cannot be removed.
    #[command(after_help = "Example (orders has 6 partitions; give it 6 more):\n  \
        tern topic add-partitions orders --count 12\n\n\
        Existing partitions keep their records and replicas. From then on about\n\
        (new - old) / new of the keys go to the new partitions; records written\n\
        before keep their place, so per-key order holds within a partition, not\n\
        across the growth. Producers pick up the new count within their metadata\n\
        refresh (30 s by default); consumer groups rebalance at once and read the\n\
        new partitions from their first record.")]
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total number of partitions (larger than the current one).
        #[arg(long)]
        count: u32,
    },
    /// Delete a topic and all its records.
    #[command(after_help = "Example:\n  tern topic delete orders")]
    Delete {
        /// Topic name.
        name: String,
    },
}

pub(crate) async fn run(client: Client, command: TopicCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_ms,
            retention_bytes,
        } => {
            admin
                .create_topic(
                    &name,
                    NewTopic {
                        partitions,
                        replication_factor,
                        retention_ms,
                        retention_bytes,
                    },
                )
                .await?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::AddPartitions { name, count } => {
            admin.create_partitions(&name, count).await?;
            println!("topic {name} now has {count} partitions");
        }
        TopicCommand::List { output } => {
            for t in admin.list_topics().await? {
                if output.json() {
                    print_json(&json!({
                        "name": t.name,
                        "partitions": t.partitions.len(),
                        "replication_factor": t.config.replication_factor,
                    }))?;
                } else {
                    println!("{}\t{} partitions", t.name, t.partitions.len());
                }
            }
        }
        TopicCommand::Describe { name, output } => {
            let t = admin.describe_topic(&name).await?;
            if output.json() {
                print_json(&topic_json(&t))?;
                return Ok(());
            }
            let retention = |v: i64, unit: &str| {
                if v < 0 {
                    "unlimited".to_owned()
                } else {
                    format!("{v}{unit}")
                }
            };
            println!(
                "topic {}  partitions {}  replication-factor {}  retention {} / {}",
                t.name,
                t.partitions.len(),
                t.config.replication_factor,
                retention(t.config.retention_ms, "ms"),
                retention(t.config.retention_bytes, "B"),
            );
            println!("partition\tleader\treplicas\tin-sync\tlog-start\tlog-end\tcommitted");
            let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            for p in &t.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    p.leader,
                    ids(&p.replicas),
                    ids(&p.in_sync),
                    p.log_start,
                    p.log_end,
                    p.high_watermark
                );
            }
        }
        TopicCommand::VerifyReplicas { name, wait_secs } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
            let t = admin.describe_topic(&name).await?;
            let mut all_ok = true;
            println!("partition\treplica\tlog-start\tlog-end\trecords\txxh3");
            for p in &t.partitions {
                loop {
                    let brokers: std::collections::HashMap<u32, String> =
                        admin.client().brokers().into_iter().collect();
                    let mut digests = Vec::new();
                    for r in &p.replicas {
                        let addr = brokers.get(r).cloned().unwrap_or_default();
                        let d = admin.replica_digest(&addr, &name, p.partition).await;
                        digests.push((*r, d));
                    }
                    let same = digests.iter().all(|(_, d)| {
                        matches!((d, &digests[0].1), (Ok(a), Ok(b)) if a.log_end == b.log_end && a.xxh3 == b.xxh3)
                    });
                    if same || std::time::Instant::now() >= deadline {
                        for (r, d) in &digests {
                            match d {
                                Ok(d) => println!(
                                    "{}\t{r}\t{}\t{}\t{}\t{:016x}",
                                    p.partition, d.log_start, d.log_end, d.records, d.xxh3
                                ),
                                Err(e) => println!("{}\t{r}\terror: {e}", p.partition),
                            }
                        }
                        all_ok &= same;
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
            if !all_ok {
                anyhow::bail!("replicas of {name} differ");
            }
            println!("all replicas of {name} are identical");
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
        } => {
            admin
                .reassign_partition(&name, partition, &replicas)
                .await?;
            println!("{name}/{partition} now on brokers {replicas:?}");
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// A described topic as one JSON object (retention -1 = unlimited).
fn topic_json(t: &TopicInfo) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = t
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "in_sync": p.in_sync,
                "log_start": p.log_start,
                "log_end": p.log_end,
                "high_watermark": p.high_watermark,
            })
        })
        .collect();
    json!({
        "name": t.name,
        "replication_factor": t.config.replication_factor,
        "retention_ms": t.config.retention_ms,
        "retention_bytes": t.config.retention_bytes,
        "partitions": partitions,
    })
}

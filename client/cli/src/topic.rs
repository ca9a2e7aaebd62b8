//! `tern topic ...`

use clap::Subcommand;
use tern_client::{Admin, Client, NewTopic};

#[derive(Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
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
    List,
    /// Show a topic's partitions: leader, replicas, in-sync replicas, offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Read every partition from each of its replicas directly and compare
    /// them byte for byte (waits up to --wait-secs for followers to catch
    /// up); exits non-zero if any replica differs.
    VerifyReplicas {
        /// Topic name.
        name: String,
        /// How long replicas may take to converge.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Move a partition's replicas to other brokers (online: the new ones
    /// catch up before the old ones leave).
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
    /// Delete a topic and all its records.
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
        TopicCommand::List => {
            for t in admin.list_topics().await? {
                println!("{}\t{} partitions", t.name, t.partitions.len());
            }
        }
        TopicCommand::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
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

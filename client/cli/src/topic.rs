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
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

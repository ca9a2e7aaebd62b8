//! `tern consume`: prints record values (optionally keys) one per line.

use std::collections::HashMap;
use std::io::Write;

use clap::Args;
use tern_client::{Admin, Client, Consumer, ConsumerConfig, Offset, OffsetReset, OffsetSpec};

#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Start at the oldest stored record (default: only new records).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in every selected partition).
    #[arg(long)]
    offset: Option<u64>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    follow: bool,
    /// Print the key, the separator, then the value.
    #[arg(long)]
    print_key: bool,
    /// Separator printed between key and value.
    #[arg(long, default_value = "\t")]
    key_separator: String,
    /// Consume as a member of this consumer group: the group's members
    /// share the partitions, each starts at the group's committed offset
    /// (a partition with none starts as --from-beginning says), and
    /// consumed offsets are committed. Ctrl-C leaves the group cleanly.
    #[arg(long, conflicts_with_all = ["offset", "partition"])]
    group: Option<String>,
}

pub(crate) async fn run(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let info = client.topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..info.partitions.len() as u32).collect(),
    };
    let start = match (args.from_beginning, args.offset) {
        (true, _) => Offset::Earliest,
        (_, Some(o)) => Offset::At(o),
        _ => Offset::Latest,
    };
    // Without --follow, stop at the end as it is now.
    let admin = Admin::new(client.clone());
    let mut ends = HashMap::new();
    if !args.follow {
        for &p in &partitions {
            ends.insert(
                p,
                admin
                    .list_offset(&args.topic, p, OffsetSpec::Latest)
                    .await?,
            );
        }
    }
    let mut consumer = match &args.group {
        Some(group) => {
            let config = ConsumerConfig {
                offset_reset: if args.from_beginning {
                    OffsetReset::Earliest
                } else {
                    OffsetReset::Latest
                },
                auto_commit_interval: Some(std::time::Duration::from_secs(1)),
                ..Default::default()
            };
            let mut c = Consumer::new(client, config);
            c.subscribe(group, &[&args.topic]).await?;
            c
        }
        None => {
            let mut c = Consumer::new(client, ConsumerConfig::default());
            c.assign(&args.topic, &partitions, start).await?;
            c
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // A group member reads only its assigned partitions.
    let done = |c: &Consumer, printed: u64| {
        let read = |p: u32| c.position(&args.topic, p);
        args.count.is_some_and(|n| printed >= n)
            || (!args.follow
                && partitions
                    .iter()
                    .all(|p| read(*p).is_none_or(|pos| pos >= ends[p])))
    };
    while !done(&consumer, printed) {
        let records = tokio::select! {
            r = consumer.poll() => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        for r in records {
            if !args.follow && r.offset >= ends[&r.partition] {
                continue;
            }
            if args.print_key {
                if let Some(k) = &r.key {
                    out.write_all(k)?;
                }
                out.write_all(args.key_separator.as_bytes())?;
            }
            if let Some(v) = &r.value {
                out.write_all(v)?;
            }
            out.write_all(b"\n")?;
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    consumer.close().await?;
    Ok(())
}

//! `tern group ...`: consumer groups.

use clap::{ArgGroup, Subcommand};
use tern_client::{Admin, Client, Offset};

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// List consumer groups.
    List,
    /// Members, assignment, and committed offset and lag per partition.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's committed offsets for every partition of a topic.
    /// Stop the group's consumers first (the broker refuses otherwise).
    #[command(group(ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset"])))]
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic whose partitions move.
        #[arg(long)]
        topic: String,
        /// To each partition's first stored record.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's end (skip everything stored).
        #[arg(long)]
        to_latest: bool,
        /// To this offset in every partition.
        #[arg(long)]
        to_offset: Option<u64>,
    },
}

pub(crate) async fn run(client: Client, command: GroupCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        GroupCommand::List => {
            for g in admin.list_groups().await? {
                println!("{g}");
            }
        }
        GroupCommand::Describe { group } => {
            let info = admin.describe_group(&group).await?;
            println!("group {} generation {}", info.group, info.generation);
            println!("member\tsession\ttopics\tpartitions");
            for m in &info.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect();
                println!(
                    "{:016x}\t{}ms\t{}\t{}",
                    m.member,
                    m.session_timeout_ms,
                    m.topics.join(","),
                    parts.join(",")
                );
            }
            println!("topic\tpartition\towner\tcommitted\tend\tlag");
            for o in &info.offsets {
                let owner = info
                    .members
                    .iter()
                    .find(|m| m.assignment.contains(&(o.topic.clone(), o.partition)))
                    .map_or("-".to_owned(), |m| format!("{:016x}", m.member));
                let show = |v: u64| {
                    if v == u64::MAX {
                        "-".to_owned()
                    } else {
                        v.to_string()
                    }
                };
                let lag = if o.committed == u64::MAX || o.high_watermark == u64::MAX {
                    "-".to_owned()
                } else {
                    o.high_watermark.saturating_sub(o.committed).to_string()
                };
                println!(
                    "{}\t{}\t{owner}\t{}\t{}\t{lag}",
                    o.topic,
                    o.partition,
                    show(o.committed),
                    show(o.high_watermark)
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
        } => {
            let to = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => Offset::Earliest,
                (_, true, _) => Offset::Latest,
                (_, _, Some(o)) => Offset::At(o),
                _ => anyhow::bail!("give --to-earliest, --to-latest or --to-offset N"),
            };
            for (t, p, o) in admin.reset_group_offsets(&group, &topic, to).await? {
                println!("{t}\t{p}\t{o}");
            }
        }
    }
    Ok(())
}

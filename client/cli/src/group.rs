//! `tern group ...`: consumer groups.

use clap::{ArgGroup, Subcommand};
use serde_json::json;
use tern_client::{Admin, Client, ErrorCode, GroupInfo, Offset};

use crate::consume::parse_timestamp;
use crate::output::{print_json, OutputArgs};

/// A committed offset or high watermark the broker does not know.
const UNKNOWN: u64 = u64::MAX;

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// List consumer groups.
    #[command(after_help = "Examples:\n  tern group list\n  tern group list --output json")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Members, assignment, and committed offset and lag per partition.
    #[command(after_help = "Examples:\n  \
        tern group describe billing\n  \
        tern group describe billing --output json | jq '[.offsets[].lag] | add'")]
    Describe {
        /// Group name.
        group: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move a group's committed offsets for every partition of a topic.
    /// Stop the group's consumers first (the broker refuses otherwise).
    #[command(
        group(ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])),
        after_help = "Examples:\n  \
            tern group reset-offsets billing --topic orders --to-earliest --dry-run\n  \
            tern group reset-offsets billing --topic orders --to-timestamp 2026-12-01T00:00:00Z"
    )]
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
        /// To the start of each partition's first batch holding a record at
        /// or after this time (RFC 3339, e.g. 2026-12-01T08:00:00Z, or ms
        /// since the epoch); the broker indexes time per batch.
        #[arg(long, value_parser = parse_timestamp)]
        to_timestamp: Option<i64>,
        /// Print each partition's committed offset and the one it would
        /// get, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(crate) async fn run(client: Client, command: GroupCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        GroupCommand::List { output } => {
            for g in admin.list_groups().await? {
                if output.json() {
                    print_json(&json!({ "group": g }))?;
                } else {
                    println!("{g}");
                }
            }
        }
        GroupCommand::Describe { group, output } => {
            let info = admin.describe_group(&group).await?;
            if output.json() {
                print_json(&group_json(&info))?;
            } else {
                print_group(&info);
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
            dry_run,
        } => {
            let to = match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, ..) => Offset::Earliest,
                (_, true, ..) => Offset::Latest,
                (_, _, Some(o), _) => Offset::At(o),
                (.., Some(t)) => Offset::Timestamp(t),
                _ => anyhow::bail!(
                    "give --to-earliest, --to-latest, --to-offset N or --to-timestamp T"
                ),
            };
            if dry_run {
                let targets = admin.group_offset_targets(&topic, to).await?;
                // A reset creates a group the broker does not know yet.
                let info = match admin.describe_group(&group).await {
                    Ok(info) => info,
                    Err(e) if e.code() == Some(ErrorCode::InvalidRequest) => {
                        eprintln!("{e}: the reset would create it");
                        GroupInfo {
                            group: group.clone(),
                            generation: 0,
                            members: Vec::new(),
                            offsets: Vec::new(),
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                println!("topic\tpartition\tcommitted\tnew");
                for (t, p, new) in targets {
                    let committed = info
                        .offsets
                        .iter()
                        .find(|o| o.topic == t && o.partition == p && o.committed != UNKNOWN)
                        .map_or("-".to_owned(), |o| o.committed.to_string());
                    println!("{t}\t{p}\t{committed}\t{new}");
                }
                if !info.members.is_empty() {
                    eprintln!(
                        "group {group} has {} members: the broker refuses a reset until they stop",
                        info.members.len()
                    );
                }
                eprintln!("dry run: nothing changed");
                return Ok(());
            }
            for (t, p, o) in admin.reset_group_offsets(&group, &topic, to).await? {
                println!("{t}\t{p}\t{o}");
            }
        }
    }
    Ok(())
}

/// The partition owner's member id, `None` when unassigned.
fn owner(info: &GroupInfo, topic: &str, partition: u32) -> Option<u64> {
    info.members
        .iter()
        .find(|m| {
            m.assignment
                .iter()
                .any(|(t, p)| t == topic && *p == partition)
        })
        .map(|m| m.member)
}

/// Committed offset, end and lag, `None` where unknown.
fn progress(committed: u64, end: u64) -> (Option<u64>, Option<u64>, Option<u64>) {
    let known = |v: u64| (v != UNKNOWN).then_some(v);
    let lag = known(committed)
        .zip(known(end))
        .map(|(c, e)| e.saturating_sub(c));
    (known(committed), known(end), lag)
}

fn print_group(info: &GroupInfo) {
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
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for o in &info.offsets {
        let owned_by =
            owner(info, &o.topic, o.partition).map_or("-".to_owned(), |m| format!("{m:016x}"));
        let (committed, end, lag) = progress(o.committed, o.high_watermark);
        println!(
            "{}\t{}\t{owned_by}\t{}\t{}\t{}",
            o.topic,
            o.partition,
            show(committed),
            show(end),
            show(lag)
        );
    }
}

/// A described group as one JSON object; member ids are 16-digit hex
/// strings as in the text output (a u64 does not fit a JSON number safely).
fn group_json(info: &GroupInfo) -> serde_json::Value {
    let members: Vec<serde_json::Value> = info
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<_> = m
                .assignment
                .iter()
                .map(|(t, p)| json!({ "topic": t, "partition": p }))
                .collect();
            json!({
                "member": format!("{:016x}", m.member),
                "session_timeout_ms": m.session_timeout_ms,
                "topics": m.topics,
                "assignment": assignment,
            })
        })
        .collect();
    let offsets: Vec<serde_json::Value> = info
        .offsets
        .iter()
        .map(|o| {
            let (committed, end, lag) = progress(o.committed, o.high_watermark);
            json!({
                "topic": o.topic,
                "partition": o.partition,
                "owner": owner(info, &o.topic, o.partition).map(|m| format!("{m:016x}")),
                "committed": committed,
                "end": end,
                "lag": lag,
            })
        })
        .collect();
    json!({
        "group": info.group,
        "generation": info.generation,
        "members": members,
        "offsets": offsets,
    })
}

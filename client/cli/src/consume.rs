//! `tern consume`: prints records, by default each value on its own line;
//! `--format` (kcat's `-f`) or `--output json` say what else to print.
//! Starts where `--from-beginning`, `--offset` (also `-N`: the last N of
//! each partition) or `--from-timestamp` say, and stops at the end of the
//! partitions as they were at the start unless `--follow`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;

use anyhow::bail;
use clap::Args;
use tern_client::{
    Admin, Client, Consumer, ConsumerConfig, ConsumerRecord, Offset, OffsetReset, OffsetSpec,
};

use crate::format::{format_tokens, record_json, Format};
use crate::output::{json_line, OutputArgs};

pub(crate) const EXAMPLES: &str = concat!(
    "Examples:\n  \
    tern consume orders --from-beginning --print-key\n  \
    tern consume orders --offset -10 --format '%p/%o %T %k=%s [%h]\\n'\n  \
    tern consume orders --from-timestamp 2026-12-01T08:00:00Z --output json | jq .value\n  \
    tern consume orders --partition 0,2 --follow\n  \
    tern consume orders --group billing --follow\n\n\
    --format tokens: ",
    format_tokens!()
);

/// Where each selected partition starts, as `--offset` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartArg {
    Earliest,
    Latest,
    At(u64),
    /// The last N records of each partition.
    LastN(u64),
}

/// `beginning`/`earliest`, `end`/`latest`, an offset, or `-N`.
pub(crate) fn parse_offset(s: &str) -> Result<StartArg, String> {
    match s {
        "beginning" | "earliest" => return Ok(StartArg::Earliest),
        "end" | "latest" => return Ok(StartArg::Latest),
        _ => {}
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(StartArg::At(n as u64)),
        Ok(n) => Ok(StartArg::LastN(n.unsigned_abs())),
        Err(_) => Err(format!(
            "{s:?} is not an offset: give N, -N (the last N records), beginning or end"
        )),
    }
}

/// Milliseconds since the epoch, or an RFC 3339 time (any UTC offset).
pub(crate) fn parse_timestamp(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return if ms >= 0 {
            Ok(ms)
        } else {
            Err(format!("{ms} is before the epoch"))
        };
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "{s:?} is neither ms since the epoch nor an RFC 3339 time \
                 such as 2026-12-01T08:00:00Z: {e}"
            )
        })
}

#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Start at the oldest stored record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_timestamp"])]
    from_beginning: bool,
    /// Start at this offset in every selected partition; -N starts N
    /// records before each partition's end (the last N); also
    /// `beginning` or `end`.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_offset)]
    offset: Option<StartArg>,
    /// Start at each partition's first record at or after this time
    /// (RFC 3339 such as 2026-12-01T08:00:00Z or 2026-12-01T09:00:00+01:00,
    /// or ms since the epoch).
    #[arg(long, conflicts_with = "offset", value_parser = parse_timestamp)]
    from_timestamp: Option<i64>,
    /// Read only these partitions (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    partition: Vec<u32>,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    follow: bool,
    /// Stop at the end of the partitions as it is when the command starts
    /// (the default; kcat's -e).
    #[arg(long, conflicts_with = "follow")]
    exit: bool,
    /// Print the key, the separator, then the value.
    #[arg(long, conflicts_with_all = ["format", "output"])]
    print_key: bool,
    /// Separator printed between key and value.
    #[arg(long, default_value = "\t")]
    key_separator: String,
    /// Print each record as this kcat-style format says, e.g.
    /// '%t/%p@%o %k=%s\n' (tokens listed below).
    #[arg(long, short = 'f', value_parser = Format::parse, conflicts_with = "output")]
    format: Option<Format>,
    #[command(flatten)]
    output: OutputArgs,
    /// Consume as a member of this consumer group: the group's members
    /// share the partitions, each starts at the group's committed offset
    /// (a partition with none starts as --from-beginning says), and
    /// consumed offsets are committed. Ctrl-C leaves the group cleanly.
    #[arg(long, conflicts_with_all = ["offset", "partition", "from_timestamp"])]
    group: Option<String>,
}

/// How records are written.
enum Printer {
    Plain { key_separator: Option<String> },
    Format(Format),
    Json,
}

impl Printer {
    fn write(&self, out: &mut impl Write, r: &ConsumerRecord) -> std::io::Result<()> {
        match self {
            Printer::Plain { key_separator } => {
                if let Some(sep) = key_separator {
                    out.write_all(r.key.as_deref().unwrap_or_default())?;
                    out.write_all(sep.as_bytes())?;
                }
                out.write_all(r.value.as_deref().unwrap_or_default())?;
                out.write_all(b"\n")
            }
            Printer::Format(f) => f.write(out, r),
            Printer::Json => json_line(out, &record_json(r)),
        }
    }
}

pub(crate) async fn run(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let info = client.topic(&args.topic).await?;
    let count = info.partitions.len() as u32;
    let partitions: Vec<u32> = if args.partition.is_empty() {
        (0..count).collect()
    } else {
        let chosen: BTreeSet<u32> = args.partition.iter().copied().collect();
        if let Some(p) = chosen.iter().find(|p| **p >= count) {
            bail!(
                "topic {} has no partition {p} (it has {count}: 0..{})",
                args.topic,
                count.saturating_sub(1)
            );
        }
        chosen.into_iter().collect()
    };
    let admin = Admin::new(client.clone());
    // Without --follow, stop at the end as it is now.
    let mut ends = HashMap::new();
    if !args.follow {
        for &p in &partitions {
            let end = admin
                .list_offset(&args.topic, p, OffsetSpec::Latest)
                .await?;
            ends.insert(p, end);
        }
    }
    let start = match (args.from_beginning, args.offset) {
        (true, _) => StartArg::Earliest,
        (_, Some(o)) => o,
        _ => StartArg::Latest,
    };
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
            for &p in &partitions {
                let offset = match (args.from_timestamp, start) {
                    (Some(t), _) => Offset::Timestamp(t),
                    (None, StartArg::Earliest) => Offset::Earliest,
                    (None, StartArg::Latest) => Offset::Latest,
                    (None, StartArg::At(o)) => Offset::At(o),
                    (None, StartArg::LastN(n)) => {
                        let first = admin
                            .list_offset(&args.topic, p, OffsetSpec::Earliest)
                            .await?;
                        let end = match ends.get(&p) {
                            Some(end) => *end,
                            None => {
                                admin
                                    .list_offset(&args.topic, p, OffsetSpec::Latest)
                                    .await?
                            }
                        };
                        // Offsets are contiguous: the last N start N before the end.
                        Offset::At(end.saturating_sub(n).max(first))
                    }
                };
                c.seek(&args.topic, p, offset).await?;
            }
            c
        }
    };
    let printer = match (&args.format, args.output.json()) {
        (Some(f), _) => Printer::Format(f.clone()),
        (None, true) => Printer::Json,
        (None, false) => Printer::Plain {
            key_separator: args.print_key.then(|| args.key_separator.clone()),
        },
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // The broker finds a time by batch (its newest record): the records of
    // the first batch older than the time are skipped here, per partition.
    let mut reached_time: HashSet<u32> = HashSet::new();
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
            if let Some(t) = args.from_timestamp {
                if !reached_time.contains(&r.partition) {
                    if r.timestamp_ms < t {
                        continue;
                    }
                    reached_time.insert(r.partition);
                }
            }
            printer.write(&mut out, &r)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_as_kcat_spells_them() {
        assert_eq!(parse_offset("42"), Ok(StartArg::At(42)));
        assert_eq!(parse_offset("0"), Ok(StartArg::At(0)));
        assert_eq!(parse_offset("-10"), Ok(StartArg::LastN(10)));
        assert_eq!(parse_offset("beginning"), Ok(StartArg::Earliest));
        assert_eq!(parse_offset("end"), Ok(StartArg::Latest));
        assert!(parse_offset("soon").unwrap_err().contains("-N"));
    }

    #[test]
    fn timestamps_parse_from_ms_and_rfc3339_with_any_offset() {
        assert_eq!(parse_timestamp("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_timestamp("1970-01-01T00:00:05Z"), Ok(5_000));
        assert_eq!(parse_timestamp("1970-01-01T01:00:05.250+01:00"), Ok(5_250));
        assert!(parse_timestamp("-5").is_err());
        assert!(parse_timestamp("yesterday")
            .unwrap_err()
            .contains("RFC 3339"));
    }
}

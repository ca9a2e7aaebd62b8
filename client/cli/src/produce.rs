//! `tern produce`: one record per stdin line; exits 0 only once every record
//! is acknowledged.

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use std::collections::VecDeque;

use futures::FutureExt;

use tern_client::{Client, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Split each line into key and value at the first SEP.
    #[arg(long)]
    key_separator: Option<String>,
    /// Write every record to this partition (default: by key, or sticky).
    #[arg(long)]
    partition: Option<u32>,
}

pub(crate) async fn run(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    // Fail fast on an unknown topic instead of per record.
    client.topic(&args.topic).await?;
    let producer = Producer::new(client, ProducerConfig::default());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Oldest first: acknowledgements of a partition arrive in order.
    let mut pending = VecDeque::new();
    let mut tally = Tally::default();
    while let Some(line) = lines.next_line().await.context("read stdin")? {
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_owned())), v.to_owned()),
                None => (None, line),
            },
            None => (None, line),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), value);
        record.key = key;
        record.partition = args.partition;
        pending.push_back(producer.enqueue(record).await?);
        // Note what is already acknowledged; keep the backlog bounded.
        while let Some(front) = pending.front_mut() {
            let Some(result) = front.now_or_never() else {
                break;
            };
            pending.pop_front();
            tally.note(result);
        }
        while pending.len() > 100_000 {
            let d = pending.pop_front().expect("non-empty");
            tally.note(d.await);
        }
        // A failed record already exhausted its retries: stop reading input
        // rather than fail every following line the same way.
        if tally.first_error.is_some() {
            break;
        }
    }
    if tally.first_error.is_none() {
        producer.flush().await?;
    }
    while let Some(d) = pending.pop_front() {
        tally.note(d.await);
    }
    let acknowledged = tally.acknowledged;
    if let Some(e) = tally.first_error {
        anyhow::bail!(
            "{} records failed, {acknowledged} acknowledged; first error: {e}",
            tally.failed
        );
    }
    eprintln!("{acknowledged} records acknowledged");
    Ok(())
}

#[derive(Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    first_error: Option<tern_client::ClientError>,
}

impl Tally {
    fn note(&mut self, r: Result<tern_client::RecordMetadata, tern_client::ClientError>) {
        match r {
            Ok(_) => self.acknowledged += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

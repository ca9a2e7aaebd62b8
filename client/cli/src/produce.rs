//! `tern produce`: records from stdin, split at a delimiter (a newline by
//! default, like kcat's `-D`), or one record from `--value-file`; exits 0
//! only once every record is acknowledged.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use futures::FutureExt;
use tern_client::{Client, Producer, ProducerConfig, ProducerRecord};
use tern_protocol::record::BATCH_BYTES_MAX;
use tokio::io::AsyncReadExt;

use crate::format::unescape;

pub(crate) const EXAMPLES: &str = "Examples:\n  \
    printf 'alice:first order\\nbob:second order\\n' | tern produce orders --key-separator :\n  \
    tern produce orders --header source=web --header trace=abc < lines.txt\n  \
    find . -print0 | tern produce files --null-delimited\n  \
    tern produce images --key cat.png --value-file cat.png --partition 0\n  \
    printf 'a;b;c' | tern produce letters --delimiter ';'";

/// Records acknowledged or failed before the producer stops reading more
/// input: bounds memory when the broker is slower than stdin.
const PENDING_RECORDS_MAX: usize = 100_000;

/// Bytes read from stdin at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Split each record into key and value at the first SEP.
    #[arg(long, conflicts_with = "key")]
    key_separator: Option<String>,
    /// Give every record this key.
    #[arg(long)]
    key: Option<String>,
    /// Write every record to this partition (default: by key, or sticky).
    #[arg(long)]
    partition: Option<u32>,
    /// Add a header NAME=VALUE to every record (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, Bytes)>,
    /// Records in stdin end with this string (escapes \n \t \r \0 \\ \xHH
    /// work); a newline by default, and then a trailing \r is dropped too.
    #[arg(long, short = 'D', default_value = "\\n", value_parser = unescape_delimiter)]
    delimiter: Delimiter,
    /// Records in stdin end with a NUL byte (as `find -print0` writes).
    #[arg(long, short = '0', conflicts_with = "delimiter")]
    null_delimited: bool,
    /// Send this file's bytes, unchanged, as one record's value (stdin is
    /// not read).
    #[arg(long, conflicts_with_all = ["delimiter", "null_delimited", "key_separator"])]
    value_file: Option<PathBuf>,
}

fn parse_header(s: &str) -> Result<(String, Bytes), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => {
            Ok((name.to_owned(), Bytes::copy_from_slice(value.as_bytes())))
        }
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// The bytes that end a record in the input.
#[derive(Debug, Clone)]
struct Delimiter(Vec<u8>);

fn unescape_delimiter(s: &str) -> Result<Delimiter, String> {
    let d = unescape(s)?;
    if d.is_empty() {
        return Err("the delimiter is empty".to_owned());
    }
    Ok(Delimiter(d))
}

/// Cuts a byte stream into records at a delimiter, as the bytes arrive.
struct Splitter {
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    /// Start of the record being assembled in `buf`.
    start: usize,
    /// `buf[..scanned]` holds no delimiter start (after `start`).
    scanned: usize,
    /// Newline-delimited text may come with CRLF line ends.
    strip_cr: bool,
}

impl Splitter {
    fn new(delimiter: Vec<u8>) -> Splitter {
        Splitter {
            strip_cr: delimiter == b"\n",
            delimiter,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        // Drop what was handed out before growing, so the buffer holds one
        // partial record plus one chunk.
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        self.buf.extend_from_slice(data);
    }

    /// Bytes of the record not yet complete.
    fn pending_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    fn record(&self, end: usize) -> Bytes {
        let mut r = &self.buf[self.start..end];
        if self.strip_cr {
            r = r.strip_suffix(b"\r").unwrap_or(r);
        }
        Bytes::copy_from_slice(r)
    }

    /// The next complete record, if the buffer holds one.
    fn next_record(&mut self) -> Option<Bytes> {
        let from = self.scanned.max(self.start);
        let d = &self.delimiter;
        let found = if d.len() == 1 {
            self.buf[from..].iter().position(|b| *b == d[0])
        } else {
            self.buf[from..]
                .windows(d.len())
                .position(|w| w == d.as_slice())
        };
        match found {
            Some(i) => {
                let end = from + i;
                let record = self.record(end);
                self.start = end + d.len();
                self.scanned = self.start;
                Some(record)
            }
            None => {
                // A delimiter may straddle the next chunk.
                self.scanned = self.buf.len().saturating_sub(d.len() - 1).max(self.start);
                None
            }
        }
    }

    /// What follows the last delimiter, unless empty: the input's last
    /// record when it does not end with a delimiter.
    fn finish(&mut self) -> Option<Bytes> {
        let last = (self.pending_bytes() > 0).then(|| self.record(self.buf.len()));
        self.start = self.buf.len();
        self.scanned = self.start;
        last
    }
}

pub(crate) async fn run(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    // Fail fast on an unknown topic or partition instead of per record.
    let info = client.topic(&args.topic).await?;
    if let Some(p) = args.partition {
        if p as usize >= info.partitions.len() {
            bail!(
                "topic {} has no partition {p} (it has {})",
                args.topic,
                info.partitions.len()
            );
        }
    }
    let producer = Producer::new(client, ProducerConfig::default());
    let make = |key: Option<Bytes>, value: Bytes| {
        let mut record = ProducerRecord::new(args.topic.clone(), value);
        record.key = key.or_else(|| args.key.clone().map(Bytes::from));
        record.partition = args.partition;
        record.headers = args.headers.clone();
        record
    };
    // Oldest first: acknowledgements of a partition arrive in order.
    let mut pending = VecDeque::new();
    let mut tally = Tally::default();
    if let Some(path) = &args.value_file {
        let len = std::fs::metadata(path)
            .with_context(|| format!("read {}", path.display()))?
            .len();
        if len > BATCH_BYTES_MAX as u64 {
            bail!(
                "{} has {len} bytes: a record is at most {BATCH_BYTES_MAX} bytes",
                path.display()
            );
        }
        let value = tokio::fs::read(path)
            .await
            .with_context(|| format!("read {}", path.display()))?;
        pending.push_back(producer.enqueue(make(None, value.into())).await?);
    } else {
        let delimiter = if args.null_delimited {
            vec![0]
        } else {
            args.delimiter.0.clone()
        };
        let mut splitter = Splitter::new(delimiter);
        let mut stdin = tokio::io::stdin();
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mut input_done = false;
        while !input_done && tally.first_error.is_none() {
            let n = stdin.read(&mut chunk).await.context("read stdin")?;
            splitter.push(&chunk[..n]);
            let mut records = Vec::new();
            while let Some(r) = splitter.next_record() {
                records.push(r);
            }
            if n == 0 {
                input_done = true;
                records.extend(splitter.finish());
            } else if splitter.pending_bytes() > BATCH_BYTES_MAX {
                bail!(
                    "no record delimiter in {} bytes of input (a record is at most \
                     {BATCH_BYTES_MAX} bytes): is --delimiter right?",
                    splitter.pending_bytes()
                );
            }
            for r in records {
                let (key, value) = split_key(r, args.key_separator.as_deref());
                pending.push_back(producer.enqueue(make(key, value)).await?);
                // Note what is already acknowledged; keep the backlog bounded.
                while let Some(front) = pending.front_mut() {
                    let Some(result) = front.now_or_never() else {
                        break;
                    };
                    pending.pop_front();
                    tally.note(result);
                }
                while pending.len() > PENDING_RECORDS_MAX {
                    let d = pending.pop_front().expect("non-empty");
                    tally.note(d.await);
                }
                // A failed record already exhausted its retries: stop
                // reading input rather than fail every following record
                // the same way.
                if tally.first_error.is_some() {
                    break;
                }
            }
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
        bail!(
            "{} records failed, {acknowledged} acknowledged; first error: {e}",
            tally.failed
        );
    }
    eprintln!("{acknowledged} records acknowledged");
    Ok(())
}

/// Key and value of one input record: split at the first `separator`, if
/// given and present.
fn split_key(record: Bytes, separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    let Some(sep) = separator.map(str::as_bytes).filter(|s| !s.is_empty()) else {
        return (None, record);
    };
    match record.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(record.slice(..i)), record.slice(i + sep.len()..)),
        None => (None, record),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes; returns every record.
    fn split(delimiter: &[u8], input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut s = Splitter::new(delimiter.to_vec());
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            s.push(c);
            while let Some(r) = s.next_record() {
                out.push(r.to_vec());
            }
        }
        out.extend(s.finish().map(|r| r.to_vec()));
        out
    }

    #[test]
    fn records_split_the_same_whatever_the_chunking() {
        let input = b"a||bc||||d||e";
        let want: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"bc".to_vec(),
            vec![],
            b"d".to_vec(),
            b"e".to_vec(),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(split(b"||", input, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn newlines_drop_a_carriage_return_and_a_final_delimiter_adds_no_record() {
        assert_eq!(
            split(b"\n", b"x\r\ny\n", 3),
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        // Only newline-delimited input is treated as text.
        assert_eq!(
            split(&[0], b"bin\r\0ary\0", 2),
            vec![b"bin\r".to_vec(), b"ary".to_vec()]
        );
        assert!(split(b"\n", b"", 1).is_empty());
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let (k, v) = split_key(Bytes::from_static(b"k:v:w"), Some(":"));
        assert_eq!((k.as_deref(), &v[..]), (Some(&b"k"[..]), &b"v:w"[..]));
        let (k, v) = split_key(Bytes::from_static(b"novalue"), Some(":"));
        assert_eq!((k, &v[..]), (None, &b"novalue"[..]));
    }

    #[test]
    fn headers_need_a_name_and_an_equals_sign() {
        assert_eq!(
            parse_header("trace=a=b").unwrap(),
            ("trace".to_owned(), Bytes::from_static(b"a=b"))
        );
        assert!(parse_header("=x").is_err());
        assert!(parse_header("novalue").is_err());
    }
}

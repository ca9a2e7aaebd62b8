//! Coordination benchmarks. `tern bench lock`: uncontended lock acquire +
//! release, each client on its own lock, against Tern or (with `--etcd`)
//! against etcd's v3 lock API through its JSON gateway, so both are measured
//! by the same loop. `tern bench rebalance`: how long a consumer group takes
//! to settle after a member joins or leaves cleanly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use tern_client::{
    Admin, Client, Consumer, ConsumerConfig, LockClient, LockMode, LockOptions, NewTopic,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Args, Clone)]
pub(crate) struct LockBenchArgs {
    /// Concurrent clients, each locking its own name.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Acquire + release pairs in total.
    #[arg(long, default_value_t = 10_000)]
    operations: u64,
    /// Benchmark etcd instead: its client URLs' HOST:PORT, comma-separated
    /// (each client talks to one, round-robin).
    #[arg(long)]
    etcd: Option<String>,
}

pub(crate) async fn run(broker: &str, a: LockBenchArgs) -> anyhow::Result<()> {
    let per_client = a.operations / a.clients as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let target = match &a.etcd {
            Some(urls) => {
                let urls: Vec<&str> = urls.split(',').collect();
                Target::Etcd(urls[i % urls.len()].to_owned())
            }
            None => Target::Tern(broker.to_owned()),
        };
        tasks.push(tokio::spawn(client_loop(target, i, per_client)));
    }
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for t in tasks {
        hist.add(t.await.context("bench client")??)
            .expect("same histogram bounds");
    }
    let secs = started.elapsed().as_secs_f64();
    let done = per_client * a.clients as u64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "lock {}: {done} acquire+release in {secs:.2} s = {:.0} ops/s; latency (acquire+release) p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        if a.etcd.is_some() { "etcd" } else { "tern" },
        done as f64 / secs,
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    Ok(())
}

enum Target {
    Tern(String),
    Etcd(String),
}

async fn client_loop(target: Target, i: usize, ops: u64) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    let name = format!("bench-{i}");
    match target {
        Target::Tern(broker) => {
            let locks = LockClient::new(crate::connect(&broker).await?);
            let options = LockOptions {
                lease: Duration::from_secs(10),
                wait: Some(Duration::from_secs(10)),
                mode: LockMode::Exclusive,
            };
            for _ in 0..ops {
                let t = Instant::now();
                let guard = locks.acquire_with(&name, options.clone()).await?;
                guard.release().await?;
                hist.record(t.elapsed().as_micros() as u64)?;
            }
        }
        Target::Etcd(addr) => {
            let mut etcd = Etcd::connect(&addr).await?;
            // A session lease, as etcd's own clients (concurrency.Session) hold.
            // Long enough for any run (real clients keep their session lease alive).
            let grant = etcd.post("/v3/lease/grant", r#"{"TTL":3600}"#).await?;
            let lease = json_str(&grant, "ID").context("lease id")?;
            let lock = format!(
                r#"{{"name":"{}","lease":{lease}}}"#,
                base64(name.as_bytes())
            );
            for _ in 0..ops {
                let t = Instant::now();
                let locked = etcd.post("/v3/lock/lock", &lock).await?;
                let key = json_str(&locked, "key").context("lock key")?;
                etcd.post("/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#))
                    .await?;
                hist.record(t.elapsed().as_micros() as u64)?;
            }
        }
    }
    Ok(hist)
}

/// A keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct Etcd {
    addr: String,
    stream: BufReader<TcpStream>,
}

impl Etcd {
    async fn connect(addr: &str) -> anyhow::Result<Etcd> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to etcd at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Etcd {
            addr: addr.to_owned(),
            stream: BufReader::new(stream),
        })
    }

    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<String> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16)?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length.context("response without length")?, 0);
            self.stream.read_exact(&mut body).await?;
        }
        let body = String::from_utf8(body)?;
        if !status.contains(" 200 ") {
            bail!("etcd {path}: {} {body}", status.trim());
        }
        Ok(body)
    }
}

/// The value of a top-level `field` of a JSON body, as a string (etcd's
/// gateway writes 64-bit integers as strings, but accept numbers too).
fn json_str(body: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    match &value[field] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Args, Clone)]
pub(crate) struct RebalanceBenchArgs {
    /// Topic (created with --partitions if missing).
    #[arg(long, default_value = "rebalance-bench")]
    topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Members that stay in the group.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Join/leave rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

/// A member's latest generation, as its own consumer reports it.
type Generations = Arc<Mutex<BTreeMap<usize, u64>>>;

fn spawn_member(
    client: Client,
    id: usize,
    topic: String,
    generations: Generations,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let config = ConsumerConfig {
            max_wait: Duration::from_millis(50),
            session_timeout: Duration::from_secs(6),
            ..Default::default()
        };
        let mut consumer = Consumer::new(client, config);
        consumer.subscribe("rebalance-bench", &[&topic]).await?;
        while !stop.load(Ordering::Acquire) {
            consumer.poll().await?;
            generations
                .lock()
                .expect("generations lock")
                .insert(id, consumer.generation());
        }
        generations.lock().expect("generations lock").remove(&id);
        consumer.close().await?;
        Ok(())
    })
}

/// Waits until `members` members run in one generation newer than `after`.
async fn settled(generations: &Generations, members: usize, after: u64) -> u64 {
    loop {
        {
            let g = generations.lock().expect("generations lock");
            let first = g.values().next().copied().unwrap_or(0);
            if g.len() == members && first > after && g.values().all(|v| *v == first) {
                return first;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(crate) async fn rebalance(broker: &str, a: RebalanceBenchArgs) -> anyhow::Result<()> {
    let client = crate::connect(broker).await?;
    let admin = Admin::new(client.clone());
    if client.topic(&a.topic).await.is_err() {
        admin
            .create_topic(&a.topic, NewTopic::new(a.partitions))
            .await?;
    }
    let generations: Generations = Arc::default();
    let stop_all = Arc::new(AtomicBool::new(false));
    let stays: Vec<_> = (0..a.members)
        .map(|id| {
            let g = generations.clone();
            spawn_member(client.clone(), id, a.topic.clone(), g, stop_all.clone())
        })
        .collect();
    let mut generation = settled(&generations, a.members, 0).await;
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let id = a.members + round + 1;
        let g = generations.clone();
        let extra = spawn_member(client.clone(), id, a.topic.clone(), g, stop.clone());
        generation = settled(&generations, a.members + 1, generation).await;
        joins.push(started.elapsed());
        let started = Instant::now();
        stop.store(true, Ordering::Release);
        generation = settled(&generations, a.members, generation).await;
        leaves.push(started.elapsed());
        extra.await??;
    }
    stop_all.store(true, Ordering::Release);
    for s in stays {
        s.await??;
    }
    let show = |mut v: Vec<Duration>| {
        v.sort();
        format!(
            "p50 {:.0} ms, max {:.0} ms",
            v[v.len() / 2].as_secs_f64() * 1000.0,
            v[v.len() - 1].as_secs_f64() * 1000.0
        )
    };
    println!(
        "rebalance, {} partitions, {} members + 1: join {}; clean leave {} ({} rounds, until every member reads in the new generation)",
        a.partitions,
        a.members,
        show(joins),
        show(leaves),
        a.rounds
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"bench-1"), "YmVuY2gtMQ==");
        assert_eq!(super::base64(b"ab"), "YWI=");
    }

    #[test]
    fn json_fields_are_read_as_etcd_writes_them() {
        let body = r#"{"header":{"revision":"5"},"ID":"7587","TTL":3600,"key":"bG9jaw=="}"#;
        assert_eq!(super::json_str(body, "ID").as_deref(), Some("7587"));
        assert_eq!(super::json_str(body, "TTL").as_deref(), Some("3600"));
        assert_eq!(super::json_str(body, "key").as_deref(), Some("bG9jaw=="));
        assert_eq!(super::json_str(body, "missing"), None);
    }
}

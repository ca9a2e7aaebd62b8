//! Cluster specification: `ternd` processes replicating with Raft on
//! loopback. Leaders are SIGKILLed, paused (SIGSTOP) and cut off by network
//! partitions (a proxy on every peer link) while idempotent `acks=all`
//! producers and a consumer run; a checker then verifies, per partition,
//! that no acknowledged record is lost, duplicated or reordered, that the
//! consumer never saw a record the final log does not hold at that offset,
//! and that every replica's log is byte-identical.
//!
//! The fault campaign is seeded: `TERN_CAMPAIGN_SEED` replays a schedule,
//! `TERN_CAMPAIGN_SECS` lengthens it (CI runs a short one) and
//! `TERN_CAMPAIGN_RATE` sets each of the two producers' records per second.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_client::{
    Admin, Client, ClientConfig, Connection, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset,
    PlanState, Producer, ProducerConfig, ProducerRecord, RebalanceOptions, RebalanceResponse,
};
use tern_protocol::api::FetchPartition;
use tern_protocol::{Request, Response};
use tern_tests::{bounded, fault_client_config, free_port, Broker, Certs, Cluster};

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(2),
        batch_bytes_max: 16 * 1024,
        retries: 300,
        retry_backoff: Duration::from_millis(100),
        broker_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

/// One replica's committed log as a broker serves it.
struct ReplicaLog {
    log_end: u64,
    records: Vec<(u64, Bytes)>,
    /// `(base offset, XXH3 of the batch bytes)` of every batch.
    batches: Vec<(u64, u64)>,
}

impl ReplicaLog {
    /// Digest of the batches from `start` on (replicas trim by retention
    /// independently, so their logs are compared from a common start).
    fn digest_from(&self, start: u64) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (base, batch) in self.batches.iter().filter(|(b, _)| *b >= start) {
            h.update(&base.to_le_bytes());
            h.update(&batch.to_le_bytes());
        }
        h.digest()
    }

    fn start(&self) -> u64 {
        self.batches.first().map_or(self.log_end, |(b, _)| *b)
    }
}

/// Reads a partition from one broker's own replica (fetch is served by any
/// replica, from committed data only).
async fn read_replica(
    addr: &str,
    config: &ClientConfig,
    topic: &str,
    partition: u32,
) -> Result<ReplicaLog, String> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(10),
        ..config.clone()
    };
    let conn = Connection::connect_with(addr, &config)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = ReplicaLog {
        log_end: 0,
        records: Vec::new(),
        batches: Vec::new(),
    };
    let mut offset = 0;
    loop {
        let response = conn
            .request(Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 4 << 20,
                partitions: vec![FetchPartition {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    max_bytes: 4 << 20,
                }],
            })
            .await
            .map_err(|e| e.to_string())?;
        let Response::Fetch(results) = response else {
            return Err("fetch answered with another type".into());
        };
        let r = &results[0];
        if r.error == ErrorCode::OffsetOutOfRange && out.records.is_empty() && r.log_start > offset
        {
            // Retention moved the start: read from there.
            offset = r.log_start;
            continue;
        }
        if r.error != ErrorCode::None {
            return Err(format!(
                "fetch {topic}/{partition} from {addr} at {offset} (log start {}, end {}): {}",
                r.log_start, r.high_watermark, r.error
            ));
        }
        out.log_end = r.high_watermark;
        if r.records.is_empty() {
            break;
        }
        for view in tern_protocol::record::split_batches(r.records.clone()) {
            let view = view.map_err(|e| e.to_string())?;
            out.batches
                .push((view.base_offset(), xxhash_rust::xxh3::xxh3_64(view.bytes())));
            for rec in view.records() {
                let rec = rec.map_err(|e| e.to_string())?;
                out.records
                    .push((rec.offset, rec.value.unwrap_or_default()));
            }
            offset = view.next_offset();
        }
        if offset >= out.log_end {
            break;
        }
    }
    Ok(out)
}

/// Waits until every replica of every partition serves the same log end,
/// then returns each replica's log.
async fn converged(
    cluster: &Cluster,
    topic: &str,
    partitions: u32,
) -> Vec<Vec<(usize, ReplicaLog)>> {
    let all: Vec<usize> = (0..cluster.brokers.len()).collect();
    converged_on(cluster, &all, topic, partitions).await
}

/// [`converged`] over the brokers at `nodes` only.
async fn converged_on(
    cluster: &Cluster,
    nodes: &[usize],
    topic: &str,
    partitions: u32,
) -> Vec<Vec<(usize, ReplicaLog)>> {
    let per_partition: Vec<Vec<usize>> = (0..partitions).map(|_| nodes.to_vec()).collect();
    converged_replicas(cluster, topic, &per_partition).await
}

/// [`converged`] with each partition read on its own brokers (indexes):
/// `replicas[p]` for partition `p`.
async fn converged_replicas(
    cluster: &Cluster,
    topic: &str,
    replicas: &[Vec<usize>],
) -> Vec<Vec<(usize, ReplicaLog)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let config = cluster.client_config();
    let mut out = Vec::new();
    for (p, nodes) in replicas.iter().enumerate() {
        let p = p as u32;
        loop {
            let mut logs = Vec::new();
            let mut failure = None;
            for (i, b) in nodes.iter().map(|i| (*i, &cluster.brokers[*i])) {
                match read_replica(&b.addr, &config, topic, p).await {
                    Ok(l) => logs.push((i, l)),
                    Err(e) => failure = Some(e),
                }
            }
            let ends: Vec<u64> = logs.iter().map(|(_, l)| l.log_end).collect();
            if failure.is_none() && ends.windows(2).all(|w| w[0] == w[1]) {
                out.push(logs);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {p} replicas did not converge: ends {ends:?}, error {failure:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// Index of the broker leading `topic`/`partition` (by node id = index + 1).
async fn leader_of(client: &Client, topic: &str, partition: u32) -> usize {
    loop {
        if let Ok(topics) = client.refresh_metadata(Some(vec![topic.to_owned()])).await {
            if let Some(p) = topics
                .first()
                .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
            {
                if p.leader > 0 {
                    return p.leader as usize - 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Debug)]
struct Acked {
    partition: u32,
    offset: u64,
    value: Bytes,
}

/// Sends record `0:i` to `partition` and waits for its acknowledgement,
/// which it records.
async fn send_acked(
    producer: &Producer,
    topic: &str,
    partition: u32,
    i: u32,
    acked: &mut Vec<Acked>,
) {
    let value = Bytes::from(format!("0:{i:010}"));
    let m = producer
        .send(ProducerRecord::new(topic, value.clone()).with_partition(partition))
        .await
        .unwrap();
    acked.push(Acked {
        partition: m.partition,
        offset: m.offset,
        value,
    });
}

/// Values are `producer:sequence`; parses them back.
fn parse_value(v: &[u8]) -> Option<(u32, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (p, n) = s.split_once(':')?;
    Some((p.parse().ok()?, n.parse().ok()?))
}

/// Keeps producing `producer:sequence` records (keyed, so all partitions get
/// some) until `stop`, recording every acknowledgement.
fn spawn_producer(
    client: Client,
    topic: &'static str,
    id: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    spawn_producer_with(producer_config(), client, topic, id, stop, acked, failed)
}

/// [`spawn_producer`] with its own producer settings.
fn spawn_producer_with(
    config: ProducerConfig,
    client: Client,
    topic: &'static str,
    id: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let producer = Producer::new(client, config);
        let mut pending = std::collections::VecDeque::new();
        let mut seq = 0u64;
        // Paced so a long campaign's bookkeeping stays in memory.
        let rate: u64 = std::env::var("TERN_CAMPAIGN_RATE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let started = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if seq.is_multiple_of(500) {
                let due = Duration::from_secs_f64(seq as f64 / rate.max(1) as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
            let value = Bytes::from(format!("{id}:{seq:010}"));
            let record =
                ProducerRecord::new(topic, value.clone()).with_key(format!("k{}", seq % 97));
            match producer.enqueue(record).await {
                Ok(d) => pending.push_back((value, d)),
                Err(_) => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            seq += 1;
            // Bound the records in flight; await the oldest first.
            while pending.len() >= 2_000 {
                let (value, d) = pending.pop_front().expect("non-empty");
                record_outcome(d.await, value, &acked, &failed);
            }
        }
        while let Some((value, d)) = pending.pop_front() {
            record_outcome(d.await, value, &acked, &failed);
        }
    })
}

fn record_outcome(
    outcome: Result<tern_client::RecordMetadata, tern_client::ClientError>,
    value: Bytes,
    acked: &Mutex<Vec<Acked>>,
    failed: &std::sync::atomic::AtomicU64,
) {
    match outcome {
        Ok(m) => acked.lock().expect("acked lock").push(Acked {
            partition: m.partition,
            offset: m.offset,
            value,
        }),
        Err(_) => {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The checker. Panics with a per-partition report when any invariant is
/// broken; prints the report either way.
fn check(
    logs: &[Vec<(usize, ReplicaLog)>],
    acked: &[Acked],
    consumed: &[(u32, u64, Bytes)],
) -> String {
    let mut report = String::new();
    let mut broken = false;
    for (p, replicas) in logs.iter().enumerate() {
        let p = p as u32;
        let reference = &replicas[0].1;
        let at: HashMap<u64, &Bytes> = reference.records.iter().map(|(o, v)| (*o, v)).collect();
        let acked_here: Vec<&Acked> = acked.iter().filter(|a| a.partition == p).collect();
        // Records below the log start were deleted by retention, not lost.
        let lost = acked_here
            .iter()
            .filter(|a| a.offset >= reference.start() && at.get(&a.offset) != Some(&&a.value))
            .count();
        let mut seen: HashMap<&Bytes, usize> = HashMap::new();
        for (_, v) in &reference.records {
            *seen.entry(v).or_default() += 1;
        }
        let duplicates = seen.values().filter(|n| **n > 1).count();
        // Per producer, sequences must rise along the log.
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        let mut reordered = 0;
        for (_, v) in &reference.records {
            if let Some((producer, seq)) = parse_value(v) {
                if let Some(prev) = last.insert(producer, seq) {
                    if seq <= prev {
                        reordered += 1;
                    }
                }
            }
        }
        let phantom = consumed
            .iter()
            .filter(|(cp, o, v)| *cp == p && at.get(o) != Some(&v))
            .count();
        let common = replicas.iter().map(|(_, l)| l.start()).max().unwrap_or(0);
        let digests: Vec<String> = replicas
            .iter()
            .map(|(i, l)| format!("node{}={:016x}", i + 1, l.digest_from(common)))
            .collect();
        let identical = replicas
            .iter()
            .all(|(_, l)| l.digest_from(common) == reference.digest_from(common));
        broken |= lost > 0 || duplicates > 0 || reordered > 0 || phantom > 0 || !identical;
        report.push_str(&format!(
            "partition {p}: log end {}, acked {}, lost {lost}, duplicates {duplicates}, reordered {reordered}, \
             consumed-but-not-in-log {phantom}, replicas identical: {identical} ({})\n",
            reference.log_end,
            acked_here.len(),
            digests.join(" ")
        ));
    }
    assert!(!broken, "checker found violations:\n{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_fails_over_within_seconds_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(120), async {
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic("ha", NewTopic::new(3)).await.unwrap();
        let t = admin.describe_topic("ha").await.unwrap();
        assert_eq!(
            t.config.replication_factor, 3,
            "default RF 3 with 3 brokers"
        );
        for p in &t.partitions {
            assert_eq!(p.replicas.len(), 3);
            assert!(p.leader >= 1, "partition {} has a leader", p.partition);
        }
        let producer = Producer::new(client.clone(), producer_config());
        let mut acked = Vec::new();
        for i in 0..2_000u32 {
            send_acked(&producer, "ha", 0, i, &mut acked).await;
        }
        let victim = leader_of(&client, "ha", 0).await;
        cluster.brokers[victim].kill9();
        let killed = Instant::now();
        // The first record sent after the kill: acknowledged by the new leader.
        send_acked(&producer, "ha", 0, 2_000, &mut acked).await;
        let failover = killed.elapsed();
        let new_leader = leader_of(&client, "ha", 0).await;
        assert_ne!(new_leader, victim, "a new leader took over");
        println!(
            "failover: leader node{} killed -> first acknowledged produce after {failover:?}",
            victim + 1
        );
        assert!(
            failover < Duration::from_secs(5),
            "failover took {failover:?}"
        );
        for i in 2_001..3_000u32 {
            send_acked(&producer, "ha", 0, i, &mut acked).await;
        }
        // The killed broker comes back and catches up.
        cluster.brokers[victim].restart_no_wait();
        cluster.brokers[victim].wait_ready();
        let logs = converged(&cluster, "ha", 1).await;
        // The restarted broker may also take the partition back, as its
        // preferred leader, a few seconds after it caught up; a leader
        // elected a moment ago does not know yet who is in sync.
        let deadline = Instant::now() + Duration::from_secs(15);
        let p0 = loop {
            let described = admin.describe_topic("ha").await.unwrap();
            let p0 = described.partitions[0].clone();
            if p0.in_sync.len() == 3 || Instant::now() > deadline {
                break p0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            [new_leader + 1, victim + 1].contains(&(p0.leader as usize)),
            "{p0:?}"
        );
        assert_eq!(
            p0.in_sync.len(),
            3,
            "the restarted replica is back in sync: {p0:?}"
        );
        assert_eq!(p0.high_watermark, 3_000);
        println!("{}", check(&logs, &acked, &[]));
        assert_eq!(logs[0][0].1.records.len(), 3_000);
        // A consumer through the seeds reads them all, in order.
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer.assign("ha", &[0], Offset::Earliest).await.unwrap();
        let mut next = 0u64;
        while next < 3_000 {
            for r in consumer.poll().await.unwrap() {
                assert_eq!(r.offset, next);
                next += 1;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_fails_over_within_seconds_with_the_default_client_config() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(150), async {
        // Defaults everywhere: what a user gets. A paused (SIGSTOPped)
        // broker keeps its connections open and sends nothing: no reset
        // tells the client, only its liveness check does.
        let client = Client::connect(&cluster.seeds()).await.unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic("hung", NewTopic::new(1)).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let mut acked = Vec::new();
        for i in 0..500u32 {
            send_acked(&producer, "hung", 0, i, &mut acked).await;
        }
        let victim = leader_of(&client, "hung", 0).await;
        let value = |i: u32| Bytes::from(format!("0:{i:010}"));
        let record = |i: u32| ProducerRecord::new("hung", value(i)).with_partition(0);
        // One record on its way as the leader freezes, one sent to it after.
        let in_flight = producer.enqueue(record(500)).await.unwrap();
        cluster.brokers[victim].pause();
        let paused = Instant::now();
        let after = producer.enqueue(record(501)).await.unwrap();
        for (i, delivery) in [(500, in_flight), (501, after)] {
            let m = delivery.await.expect("acknowledged by the new leader");
            acked.push(Acked {
                partition: m.partition,
                offset: m.offset,
                value: value(i),
            });
        }
        let failover = paused.elapsed();
        println!(
            "failover: leader node{} paused -> records in flight acknowledged after {failover:?}",
            victim + 1
        );
        assert!(
            failover < Duration::from_secs(10),
            "a paused leader held the produce for {failover:?}"
        );
        assert_ne!(leader_of(&client, "hung", 0).await, victim);
        for i in 502..1_000u32 {
            send_acked(&producer, "hung", 0, i, &mut acked).await;
        }
        // The paused broker wakes up, steps down and catches up; nothing
        // acknowledged is lost or stored twice, in any replica.
        cluster.brokers[victim].resume();
        let logs = converged(&cluster, "hung", 1).await;
        println!("{}", check(&logs, &acked, &[]));
        assert_eq!(logs[0][0].1.records.len(), 1_000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connecting_while_its_seed_broker_starts_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::configure(&dir.path().join("node1"), &[]);
    // Until the broker binds its port, a stand-in accepts and closes every
    // connection there (what a starting broker was seen to do); the other
    // seed never listens at all.
    let stand_in = tokio::net::TcpListener::bind(&broker.addr).await.unwrap();
    let seeds = format!("127.0.0.1:{},{}", free_port(), broker.addr);
    bounded(Duration::from_secs(120), async {
        let connecting = tokio::spawn(async move {
            let started = Instant::now();
            (Client::connect(&seeds).await, started.elapsed())
        });
        // The client is turned away twice before the broker starts.
        for _ in 0..2 {
            let (turned_away, _) = stand_in.accept().await.unwrap();
            drop(turned_away);
        }
        drop(stand_in);
        broker.spawn();
        let (client, waited) = connecting.await.unwrap();
        let client = client.unwrap_or_else(|e| panic!("connect failed after {waited:?}: {e}"));
        println!("connected {waited:?} after the first try");
        assert!(waited < ClientConfig::default().bootstrap_timeout);
        // And the client works.
        Admin::new(client.clone())
            .create_topic("boot", NewTopic::new(1))
            .await
            .unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let m = producer
            .send(ProducerRecord::new("boot", "hello"))
            .await
            .unwrap();
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer
            .assign("boot", &[0], Offset::Earliest)
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            got = consumer.poll().await.unwrap();
        }
        assert_eq!(got[0].offset, m.offset);
        assert_eq!(got[0].value.as_deref(), Some(&b"hello"[..]));
    })
    .await;
}

/// A measurement, not a check: how long after the leader of a partition is
/// SIGKILLed or SIGSTOPped is the record then in flight acknowledged, with
/// the default client and producer settings, one record sent every 50 ms.
/// Prints min/median/max over `TERN_PROBE_RUNS` runs (default 10) of each.
/// Run by `scripts/failover-probe.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 2 minutes): scripts/failover-probe.sh"]
async fn failover_probe() {
    let runs: usize = std::env::var("TERN_PROBE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(120 + 60 * runs as u64), async {
        let client = Client::connect(&cluster.seeds()).await.unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic("probe", NewTopic::new(1)).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        // (sent, acknowledged, record), in acknowledgement order.
        let acks: Arc<Mutex<Vec<(Instant, Instant, Acked)>>> = Arc::default();
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let (acks, failed, stop) = (acks.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut waiting = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    tick.tick().await;
                    let value = Bytes::from(format!("0:{i:010}"));
                    let record = ProducerRecord::new("probe", value.clone()).with_partition(0);
                    let sent = Instant::now();
                    let delivery = producer.enqueue(record).await.unwrap();
                    let (acks, failed) = (acks.clone(), failed.clone());
                    waiting.push(tokio::spawn(async move {
                        match delivery.await {
                            Ok(m) => acks.lock().unwrap().push((
                                sent,
                                Instant::now(),
                                Acked {
                                    partition: m.partition,
                                    offset: m.offset,
                                    value,
                                },
                            )),
                            Err(e) => {
                                eprintln!("record {i} failed: {e}");
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }));
                    i += 1;
                }
                for w in waiting {
                    w.await.unwrap();
                }
            })
        };
        // When the first record sent at or after `at` was acknowledged:
        // those in flight at `at` were acknowledged before it, in order.
        let first_ack_after = |at: Instant| {
            acks.lock()
                .unwrap()
                .iter()
                .find(|(sent, _, _)| *sent >= at)
                .map(|(_, acked, _)| *acked)
        };
        let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
        for kind in ["SIGKILL", "SIGSTOP"] {
            let mut times = Vec::new();
            for run in 0..runs {
                // Settled: every broker serves, every replica is in sync,
                // and records are being acknowledged.
                cluster.wait_ready();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let t = admin.describe_topic("probe").await;
                    let in_sync = t.map_or(0, |t| t.partitions[0].in_sync.len());
                    let flowing = first_ack_after(Instant::now() - Duration::from_millis(200));
                    if in_sync == 3 && flowing.is_some() {
                        break;
                    }
                    assert!(Instant::now() < deadline, "cluster did not settle");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let victim = leader_of(&client, "probe", 0).await;
                let fault = Instant::now();
                if kind == "SIGKILL" {
                    cluster.brokers[victim].kill9();
                } else {
                    cluster.brokers[victim].pause();
                }
                let acked = loop {
                    if let Some(t) = first_ack_after(fault) {
                        break t;
                    }
                    assert!(
                        fault.elapsed() < Duration::from_secs(60),
                        "no acknowledgement 60 s after the {kind}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let took = acked - fault;
                println!(
                    "{kind} run {}: leader node{} -> next record acknowledged {took:?} after the fault",
                    run + 1,
                    victim + 1
                );
                times.push(took);
                if kind == "SIGKILL" {
                    cluster.brokers[victim].restart_no_wait();
                } else {
                    cluster.brokers[victim].resume();
                }
            }
            results.push((kind, times));
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        sender.await.unwrap();
        cluster.wait_ready();
        let acked: Vec<Acked> = acks
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, a)| a.clone())
            .collect();
        let logs = converged(&cluster, "probe", 1).await;
        println!("{}", check(&logs, &acked, &[]));
        for (kind, mut times) in results {
            times.sort();
            let n = times.len();
            let median = (times[(n - 1) / 2] + times[n / 2]) / 2;
            println!(
                "failover probe {kind}: {n} runs, min {:?}, median {median:?}, max {:?}",
                times[0],
                times[n - 1]
            );
        }
        assert_eq!(
            failed.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "records failed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_campaign_loses_duplicates_and_reorders_nothing() {
    let seed: u64 = std::env::var("TERN_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    let secs: u64 = std::env::var("TERN_CAMPAIGN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    println!("fault campaign: seed {seed}, {secs} s (replay: TERN_CAMPAIGN_SEED={seed} TERN_CAMPAIGN_SECS={secs})");
    let dir = tempfile::tempdir().unwrap();
    // As deployed: mutual TLS between brokers, TLS and SCRAM for clients.
    let certs = Certs::new(&dir.path().join("certs"));
    for id in 1..=3 {
        certs.node(id);
    }
    let mut args = certs.broker_args();
    args.extend(["--auth-required", "--super-user", "campaign"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_partitionable_with_env(
        dir.path(),
        3,
        &args,
        &[
            ("TERN_BOOTSTRAP_USER", "campaign"),
            ("TERN_BOOTSTRAP_PASSWORD", "campaign-password"),
        ],
    );
    let config = ClientConfig {
        tls: cluster.client_config().tls,
        credentials: cluster.client_config().credentials,
        ..fault_client_config()
    };
    let limit = Duration::from_secs(secs + 600);
    bounded(limit, async {
        const TOPIC: &str = "campaign";
        const PARTITIONS: u32 = 3;
        let client = Client::connect_with(&cluster.seeds(), config)
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topic(TOPIC, NewTopic::new(PARTITIONS))
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producers: Vec<_> = (0..2)
            .map(|id| {
                spawn_producer(
                    client.clone(),
                    TOPIC,
                    id,
                    stop.clone(),
                    acked.clone(),
                    failed.clone(),
                )
            })
            .collect();
        // A consumer tails every partition throughout.
        let consumed = Arc::new(Mutex::new(Vec::new()));
        let consumer_task = {
            let (client, stop, consumed) = (client.clone(), stop.clone(), consumed.clone());
            tokio::spawn(async move {
                let mut consumer = Consumer::new(client, ConsumerConfig::default());
                while consumer
                    .assign(TOPIC, &(0..PARTITIONS).collect::<Vec<_>>(), Offset::Earliest)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    if let Ok(records) = consumer.poll().await {
                        let mut c = consumed.lock().expect("consumed lock");
                        for r in records {
                            c.push((r.partition, r.offset, r.value.unwrap_or_default()));
                        }
                    }
                }
            })
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let mut faults = 0;
        while started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            let node = rng.random_range(0..cluster.brokers.len());
            let hold = Duration::from_millis(rng.random_range(500..3000));
            let kind = rng.random_range(0..3);
            let at = started.elapsed().as_secs_f64();
            match kind {
                0 => {
                    println!("[{at:7.2}s] SIGKILL node{} for {hold:?}", node + 1);
                    cluster.brokers[node].kill9();
                    tokio::time::sleep(hold).await;
                    cluster.brokers[node].restart_no_wait();
                }
                1 => {
                    println!("[{at:7.2}s] SIGSTOP node{} for {hold:?}", node + 1);
                    cluster.brokers[node].pause();
                    tokio::time::sleep(hold).await;
                    cluster.brokers[node].resume();
                }
                _ => {
                    println!("[{at:7.2}s] partition node{} away for {hold:?}", node + 1);
                    cluster.isolate(node);
                    tokio::time::sleep(hold).await;
                    cluster.heal();
                }
            }
            faults += 1;
        }
        cluster.heal();
        for b in &mut cluster.brokers {
            b.resume();
            b.wait_ready();
        }
        // Let the producers work on the healed cluster, then stop them.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        for p in producers {
            p.await.unwrap();
        }
        consumer_task.await.unwrap();
        let logs = converged(&cluster, TOPIC, PARTITIONS).await;
        let acked = acked.lock().unwrap().clone();
        let consumed = consumed.lock().unwrap().clone();
        let report = check(&logs, &acked, &consumed);
        println!(
            "{faults} faults; {} records acknowledged, {} failed after retries, {} consumed\n{report}",
            acked.len(),
            failed.load(std::sync::atomic::Ordering::Relaxed),
            consumed.len()
        );
        assert!(acked.len() > 1_000, "the campaign produced too little to mean anything");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_broker_joins_and_another_leaves_online_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(180), async {
        const TOPIC: &str = "moving";
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic(TOPIC, NewTopic::new(3)).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producer = spawn_producer(
            client.clone(),
            TOPIC,
            0,
            stop.clone(),
            acked.clone(),
            failed.clone(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;

        // A fourth broker joins while records flow.
        let four = cluster.start_joining(dir.path(), &[]);
        let peer = cluster.brokers[four].peer_addr.clone();
        admin.add_broker(4, &peer).await.unwrap();
        cluster.brokers[four].wait_ready();
        // It registers its client address through the metadata group.
        let deadline = Instant::now() + Duration::from_secs(15);
        while client.brokers().len() < 4 {
            assert!(
                Instant::now() < deadline,
                "broker 4 never registered: {:?}",
                client.brokers()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.controller().await.unwrap();
        }

        // Move partition 0 onto the newcomer explicitly...
        let before = admin.describe_topic(TOPIC).await.unwrap();
        let mut target = before.partitions[0].replicas.clone();
        target.retain(|r| *r != 1);
        target.push(4);
        admin.reassign_partition(TOPIC, 0, &target).await.unwrap();
        target.sort();
        // Metadata is read from any broker's copy of the catalogue, which
        // follows the metadata leader within moments.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let after = admin.describe_topic(TOPIC).await.unwrap();
            let mut got = after.partitions[0].replicas.clone();
            got.sort();
            if got == target {
                break;
            }
            assert!(Instant::now() < deadline, "partition 0 not moved: {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // ...then remove broker 3 altogether: its replicas move first.
        admin
            .remove_broker(3, Duration::from_secs(120))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let described = admin.describe_topic(TOPIC).await.unwrap();
            let done = described
                .partitions
                .iter()
                .all(|p| !p.replicas.contains(&3) && p.replicas.len() == 3);
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker 3's replicas not moved with the replication factor kept: {:?}",
                described.partitions
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every broker's copy of the catalogue soon forgets broker 3.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            client.controller().await.unwrap();
            if !client.brokers().iter().any(|(id, _)| *id == 3) {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", client.brokers());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.brokers[2].kill9();

        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        producer.await.unwrap();
        let logs = converged_on(&cluster, &[0, 1, 3], TOPIC, 3).await;
        let acked = acked.lock().unwrap().clone();
        println!(
            "{} acknowledged during the moves, {} failed\n{}",
            acked.len(),
            failed.load(std::sync::atomic::Ordering::Relaxed),
            check(&logs, &acked, &[])
        );
        assert!(acked.len() > 1_000);
    })
    .await;
}

/// The replicas of partition `p` of `topic` as the rendezvous placement
/// puts them on `brokers`, restated independently of the broker's code:
/// seed = low 32 bits of XXH3(topic name); each broker scores
/// XXH3(seed LE32 | p LE32 | broker LE64); the `rf` best win, best first.
fn placed(topic: &str, p: u32, brokers: &[u64], rf: usize) -> Vec<u32> {
    let seed = xxhash_rust::xxh3::xxh3_64(topic.as_bytes()) as u32;
    let mut scored: Vec<(u64, u64)> = brokers
        .iter()
        .map(|b| {
            let mut key = Vec::with_capacity(16);
            key.extend_from_slice(&seed.to_le_bytes());
            key.extend_from_slice(&p.to_le_bytes());
            key.extend_from_slice(&b.to_le_bytes());
            (xxhash_rust::xxh3::xxh3_64(&key), *b)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.iter().take(rf).map(|(_, b)| *b as u32).collect()
}

/// Issue #15, item 1: a topic grows online. While a keyed producer writes
/// and a consumer group reads, a topic of 3 partitions (RF 3) on 3 brokers
/// grows to 6: the new partitions get leaders, on the brokers the
/// rendezvous placement names, while the old ones keep their replicas; the
/// producer routes keys over 6 partitions once its metadata refreshes
/// (every key either stays or moves to a new partition); the group takes
/// the new partitions up without a member restart and reads what is
/// written to them; nothing acknowledged is lost, duplicated or reordered
/// and the replicas agree. Growing it to a count not larger than the
/// current one, past the per-topic or cluster limit, or growing an unknown
/// topic is refused with a code and a message that say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_grows_online_and_producers_and_consumer_groups_follow() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3, &["--cluster-partitions-max", "8"]);
    bounded(Duration::from_secs(180), async {
        const TOPIC: &str = "growing";
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic(TOPIC, NewTopic::new(3)).await.unwrap();
        let before = admin.describe_topic(TOPIC).await.unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producer = spawn_producer_with(
            ProducerConfig {
                metadata_max_age: Duration::from_millis(500),
                ..producer_config()
            },
            client.clone(),
            TOPIC,
            0,
            stop.clone(),
            acked.clone(),
            failed.clone(),
        );

        // One group member reads the topic the whole time.
        let consumed: Arc<Mutex<Vec<(u32, u64, Bytes)>>> = Arc::default();
        let member = {
            let client = Client::connect_with(&cluster.seeds(), fault_client_config())
                .await
                .unwrap();
            let stop = stop.clone();
            let consumed = consumed.clone();
            // `latest`: a new partition is still read from its first
            // record, because the growth commits offset 0 for the group.
            let config = ConsumerConfig {
                offset_reset: tern_client::OffsetReset::Latest,
                ..Default::default()
            };
            let mut consumer = Consumer::new(client, config);
            consumer.subscribe("readers", &[TOPIC]).await.unwrap();
            assert_eq!(consumer.assignment().len(), 3);
            tokio::spawn(async move {
                let generation = consumer.generation();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    // Cancel safe: a timed-out wait loses no record.
                    let next =
                        tokio::time::timeout(Duration::from_millis(200), consumer.next_record());
                    if let Ok(Ok(r)) = next.await {
                        consumed.lock().unwrap().push((
                            r.partition,
                            r.offset,
                            r.value.unwrap_or_default(),
                        ));
                    }
                }
                (generation, consumer)
            })
        };

        let acked_on = |partitions: std::ops::Range<u32>| {
            let acked = acked.lock().unwrap();
            partitions
                .clone()
                .all(|p| acked.iter().filter(|a| a.partition == p).count() >= 50)
        };
        let consumed_on = |partitions: std::ops::Range<u32>| {
            let consumed = consumed.lock().unwrap();
            partitions
                .clone()
                .all(|p| consumed.iter().filter(|(cp, _, _)| *cp == p).count() >= 50)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(acked_on(0..3) && consumed_on(0..3)) {
            assert!(Instant::now() < deadline, "no traffic before the growth");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let grown_at = acked.lock().unwrap().len();
        admin.create_partitions(TOPIC, 6).await.unwrap();

        // The old partitions kept their replicas; the new ones are where
        // the placement puts them and have leaders among them.
        let after = admin.describe_topic(TOPIC).await.unwrap();
        assert_eq!(after.partitions.len(), 6, "{after:?}");
        for p in 0..3 {
            assert_eq!(after.partitions[p].replicas, before.partitions[p].replicas);
        }
        for p in &after.partitions[3..] {
            assert_eq!(
                p.replicas,
                placed(TOPIC, p.partition, &[1, 2, 3], 3),
                "partition {} placed elsewhere",
                p.partition
            );
            assert!(
                p.replicas.contains(&p.leader),
                "partition {p:?} has no leader among its replicas"
            );
        }

        // Keyed records reach the new partitions, and the group reads them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(acked_on(3..6) && consumed_on(3..6)) {
            assert!(
                Instant::now() < deadline,
                "new partitions not produced to or not consumed: acked {}, consumed {}\n{}",
                acked.lock().unwrap().len(),
                consumed.lock().unwrap().len(),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        producer.await.unwrap();
        let (first_generation, consumer) = member.await.unwrap();
        assert!(consumer.generation() > first_generation, "no rebalance");
        let mut owned: Vec<u32> = consumer.assignment().iter().map(|(_, p)| *p).collect();
        owned.sort();
        assert_eq!(owned, vec![0, 1, 2, 3, 4, 5]);
        drop(consumer);

        // Routing: a key stays on its partition or moves to a new one,
        // and after the growth the producer used the 6-partition layout.
        let acked = acked.lock().unwrap().clone();
        for a in &acked {
            let (_, seq) = parse_value(&a.value).unwrap();
            let key = format!("k{}", seq % 97);
            let old = tern_protocol::partitioner::partition_for_key(key.as_bytes(), 3);
            let new = tern_protocol::partitioner::partition_for_key(key.as_bytes(), 6);
            assert!(
                a.partition == old || a.partition == new,
                "{key} on {}",
                a.partition
            );
            if new != old {
                assert!(new >= 3, "jump hash moves keys to new partitions only");
            }
        }
        let moved_after = acked[grown_at..]
            .iter()
            .filter(|a| a.partition >= 3)
            .count();
        assert!(moved_after > 0);

        let logs = converged(&cluster, TOPIC, 6).await;
        let consumed = consumed.lock().unwrap().clone();
        for p in 3..6 {
            assert!(
                consumed.iter().any(|(cp, o, _)| *cp == p && *o == 0),
                "the group skipped the start of new partition {p}"
            );
        }
        println!(
            "{} acknowledged across the growth, {} failed, {} consumed\n{}",
            acked.len(),
            failed.load(std::sync::atomic::Ordering::Relaxed),
            consumed.len(),
            check(&logs, &acked, &consumed)
        );

        // Refusals, each with its reason.
        let refused = |e: tern_client::ClientError, code: ErrorCode, says: &str| {
            assert_eq!(e.code(), Some(code), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        };
        let e = admin.create_partitions(TOPIC, 6).await.unwrap_err();
        refused(e, ErrorCode::InvalidPartitions, "must be larger");
        let e = admin.create_partitions(TOPIC, 2).await.unwrap_err();
        refused(e, ErrorCode::InvalidPartitions, "has 6 partitions");
        let e = admin.create_partitions("nowhere", 4).await.unwrap_err();
        refused(e, ErrorCode::UnknownTopicOrPartition, "no topic");
        let e = admin.create_partitions(TOPIC, 10_001).await.unwrap_err();
        refused(e, ErrorCode::InvalidPartitions, "10000");
        // 6 of the cluster's 8 partitions are taken: 3 more would pass.
        let e = admin.create_partitions(TOPIC, 9).await.unwrap_err();
        refused(e, ErrorCode::LimitExceeded, "cluster_partitions_max");
        assert_eq!(
            admin.describe_topic(TOPIC).await.unwrap().partitions.len(),
            6
        );
        admin.create_partitions(TOPIC, 8).await.unwrap();
        assert_eq!(
            admin.describe_topic(TOPIC).await.unwrap().partitions.len(),
            8
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_data_was_wiped_refuses_to_start_and_rejoins_with_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(180), async {
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic("wiped", NewTopic::new(2)).await.unwrap();
        let producer = Producer::new(client.clone(), producer_config());
        let mut acked = Vec::new();
        for i in 0..500u32 {
            send_acked(&producer, "wiped", i % 2, i, &mut acked).await;
        }
        // Broker 3 comes back with an empty data directory: refused.
        cluster.brokers[2].kill9();
        std::fs::remove_dir_all(&cluster.brokers[2].data_dir).unwrap();
        cluster.brokers[2].spawn_no_wait();
        let exited = cluster.brokers[2].wait_exit(Duration::from_secs(20));
        assert_eq!(exited, Some(false), "a wiped broker must refuse to start");
        let log = cluster.brokers[2].log();
        assert!(log.contains("its data was lost"), "{log}");

        // The documented way back: remove it, start it with --join, add it,
        // move replicas onto it.
        admin
            .remove_broker(3, Duration::from_secs(120))
            .await
            .unwrap();
        cluster.brokers[2].add_arg("--join");
        cluster.brokers[2].spawn_no_wait();
        let peer = cluster.brokers[2].peer_addr.clone();
        admin.add_broker(3, &peer).await.unwrap();
        cluster.brokers[2].wait_ready();
        for p in 0..2 {
            admin
                .reassign_partition("wiped", p, &[1, 2, 3])
                .await
                .unwrap();
        }
        let logs = converged(&cluster, "wiped", 2).await;
        println!("{}", check(&logs, &acked, &[]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_after_retention_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &["--retention-check-ms", "200"]);
    bounded(Duration::from_secs(180), async {
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        let mut t = NewTopic::new(1);
        t.retention_bytes = Some(200_000);
        admin.create_topic("trimmed", t).await.unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                batch_bytes_max: 4_000,
                ..producer_config()
            },
        );
        for i in 0..20_000u32 {
            producer
                .enqueue(ProducerRecord::new("trimmed", format!("0:{i:010}")))
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
        // Retention trims every replica (and moves Raft's purge point).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = converged_on(&cluster, &[0, 1, 2], "trimmed", 1).await;
            let starts: Vec<u64> = logs[0]
                .iter()
                .map(|(_, l)| l.records.first().map_or(0, |r| r.0))
                .collect();
            if starts.iter().all(|s| *s > 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "retention did not run: {starts:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A new broker takes a replica: the entries it needs were deleted,
        // so it must catch up from a snapshot carrying the retained batches.
        let four = cluster.start_joining(dir.path(), &["--retention-check-ms", "200"]);
        let peer = cluster.brokers[four].peer_addr.clone();
        admin.add_broker(4, &peer).await.unwrap();
        cluster.brokers[four].wait_ready();
        let target = vec![1, 2, 4];
        admin
            .reassign_partition("trimmed", 0, &target)
            .await
            .unwrap();
        for i in 20_000..20_100u32 {
            producer
                .send(ProducerRecord::new("trimmed", format!("0:{i:010}")))
                .await
                .unwrap();
        }
        let logs = converged_on(&cluster, &[0, 1, 3], "trimmed", 1).await;
        println!("{}", check(&logs, &[], &[]));
        let newcomer = &logs[0].iter().find(|(i, _)| *i == 3).unwrap().1;
        assert!(
            newcomer.records.len() > 100,
            "the snapshot carried the retained records"
        );
        let m = cluster.brokers[four].http("/metrics").unwrap().1;
        assert!(
            tern_tests::metric_sum(&m, "tern_raft_snapshots_installed_total") >= 1.0,
            "caught up through a snapshot"
        );
    })
    .await;
}

/// A Metadata request answered by a broker that hosts few of a topic's
/// partitions asks the other brokers who leads the rest with one peer call
/// per broker, not one per partition (before: ~200 calls for this topic,
/// each a task and a frame on both brokers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_asks_each_other_broker_once_not_once_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(120), async {
        let seed = &cluster.brokers[0];
        let client = Client::connect(&seed.addr).await.unwrap();
        let admin = Admin::new(client.clone());
        let mut wide = NewTopic::new(300);
        wide.replication_factor = 1;
        admin.create_topic("wide", wide).await.unwrap();
        let peer_calls = || {
            let (_, m) = seed.http("/metrics").unwrap();
            tern_tests::metric_sum(&m, "tern_raft_peer_rtt_seconds_count")
        };
        let conn = client.connection(&seed.addr).await.unwrap();
        let before = peer_calls();
        let answer = conn
            .request(Request::Metadata {
                topics: Some(vec!["wide".into()]),
            })
            .await
            .unwrap();
        let after = peer_calls();
        let Response::Metadata { topics, .. } = answer else {
            panic!("{answer:?}")
        };
        let topic = &topics[0];
        assert_eq!(topic.partitions.len(), 300);
        let elsewhere = topic
            .partitions
            .iter()
            .filter(|p| p.replicas != [1])
            .count();
        assert!(elsewhere > 100, "{elsewhere} partitions hosted elsewhere");
        for p in &topic.partitions {
            assert_eq!(vec![p.leader], p.replicas, "partition {}", p.partition);
        }
        // Two calls (one per other broker), plus whatever Raft heartbeats
        // of the metadata group fell in between.
        let calls = after - before;
        println!("{calls} peer calls for {elsewhere} partitions hosted elsewhere");
        assert!(
            calls < 60.0,
            "{calls} peer calls for one Metadata request over {elsewhere} remote partitions"
        );
    })
    .await;
}

/// A topic name whose `partitions` partitions have, on brokers 1..=3, the
/// same number of preferred leaders (first replica) per broker, so "each
/// broker leads its share" is a fixed number.
fn evenly_preferred_topic(prefix: &str, partitions: u32) -> String {
    (0..1_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| {
            let mut firsts = [0u32; 3];
            for p in 0..partitions {
                firsts[placed(name, p, &[1, 2, 3], 3)[0] as usize - 1] += 1;
            }
            firsts.iter().all(|n| *n == partitions / 3)
        })
        .expect("some name spreads preferred leaders evenly")
}

/// Each partition's leader as its leader reports it (0: none known), with
/// its replicas, first = preferred.
async fn leaders(admin: &Admin, topic: &str) -> Vec<(u32, Vec<u32>)> {
    match admin.describe_topic(topic).await {
        Ok(t) => t
            .partitions
            .iter()
            .map(|p| (p.leader, p.replicas.clone()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls until every partition of `topic` is led by its preferred leader,
/// or fails after `limit`.
async fn wait_preferred(admin: &Admin, cluster: &Cluster, topic: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = leaders(admin, topic).await;
        if !now.is_empty() && now.iter().all(|(l, r)| r.first() == Some(l)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not back on their preferred leaders after {limit:?}: \
             (leader, replicas) {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until no partition of `topic` is led by node `gone` and each has
/// a leader.
async fn wait_led_without(admin: &Admin, cluster: &Cluster, topic: &str, gone: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = leaders(admin, topic).await;
        if !now.is_empty() && now.iter().all(|(l, _)| *l != 0 && *l != gone) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions still led by node {gone} or leaderless: {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls broker `b`'s `/metrics` until `metric` sums to at least `wanted`;
/// returns the value.
async fn wait_metric_at_least(b: &Broker, metric: &str, wanted: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = b
            .http("/metrics")
            .map_or(0.0, |(_, m)| tern_tests::metric_sum(&m, metric));
        if value >= wanted {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} is {value} on {}, wanted at least {wanted}",
            b.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue #15, item 3: leaders spread. A partition's preferred leader is
/// the first broker of its replica list. Three brokers, six partitions at
/// RF 3, two preferred by each broker: once elected, every partition is
/// led by its preferred leader. Broker 1 is SIGKILLed, so the others take
/// its two partitions; once it is back, within 30 s leadership returns to
/// the preferred leaders by itself (broker 1 campaigns once caught up and
/// after its hold), so each broker leads two again — as
/// `tern_partition_leaders` says — and broker 1 counts the elections it won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_preferred_leaders_after_a_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(180), async {
        let topic = evenly_preferred_topic("spread", 6);
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic(&topic, NewTopic::new(6)).await.unwrap();
        wait_preferred(&admin, &cluster, &topic, Duration::from_secs(30)).await;

        cluster.brokers[0].kill9();
        wait_led_without(&admin, &cluster, &topic, 1).await;
        cluster.brokers[0].restart_no_wait();
        cluster.brokers[0].wait_ready();
        let back = Instant::now();
        wait_preferred(&admin, &cluster, &topic, Duration::from_secs(30)).await;
        println!(
            "leadership back on the preferred leaders {:?} after broker 1 was ready",
            back.elapsed()
        );

        for (i, b) in cluster.brokers.iter().enumerate() {
            let series = format!("tern_partition_leaders{{broker=\"{}\"}}", i + 1);
            let (_, m) = b.http("/metrics").unwrap();
            assert_eq!(
                tern_tests::metric_sum(&m, &series),
                2.0,
                "broker {} leads its two preferred partitions\n{m}",
                i + 1
            );
            assert_eq!(
                tern_tests::metric_sum(&m, "tern_partitions_off_preferred_leader "),
                0.0
            );
        }
        let won = wait_metric_at_least(
            &cluster.brokers[0],
            "tern_preferred_leader_elections_won_total",
            2.0,
        )
        .await;
        let (_, m) = cluster.brokers[0].http("/metrics").unwrap();
        let started = tern_tests::metric_sum(&m, "tern_preferred_leader_elections_total");
        println!("broker 1 started {started} preferred-leader elections and won {won}");
        assert!(started >= won);
    })
    .await;
}

/// With `--auto-leader-balance=false`, leaders stay where elections put
/// them: after broker 1 restarts, the two partitions it is the preferred
/// leader of stay with the brokers that took them while it was down — it
/// cannot win them back without campaigning, their leaders wrote entries
/// it lacks — for longer than the automatic hold. `tern cluster
/// balance-leaders --output json` reports them (broker 1 counts two
/// partitions not on their preferred leader) and starts elections, after
/// which every partition is on its preferred leader within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_leaders_on_demand_moves_leadership_back_when_auto_balance_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &["--auto-leader-balance=false"]);
    bounded(Duration::from_secs(180), async {
        let topic = evenly_preferred_topic("on-demand", 6);
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin.create_topic(&topic, NewTopic::new(6)).await.unwrap();
        // Wherever the first elections put the leaders, one request moves
        // them (the library call).
        let first = admin.balance_leaders().await.unwrap();
        assert!(first.unreachable.is_empty(), "{first:?}");
        wait_preferred(&admin, &cluster, &topic, Duration::from_secs(30)).await;

        cluster.brokers[0].kill9();
        wait_led_without(&admin, &cluster, &topic, 1).await;
        cluster.brokers[0].restart_no_wait();
        cluster.brokers[0].wait_ready();
        // Longer than the automatic hold and two balancing rounds: nothing
        // moves by itself.
        let watch_until = Instant::now() + Duration::from_secs(7);
        while Instant::now() < watch_until {
            let now = leaders(&admin, &topic).await;
            assert!(
                now.iter().all(|(l, _)| *l != 1),
                "broker 1 took a partition back with auto balance off: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let skewed = leaders(&admin, &topic).await;
        assert_eq!(
            skewed.iter().filter(|(l, r)| r.first() != Some(l)).count(),
            2,
            "broker 1's two partitions are led elsewhere: {skewed:?}"
        );

        let out = std::process::Command::new(tern_tests::bin("tern"))
            .args(["--broker", &cluster.seeds()])
            .args(["cluster", "balance-leaders", "--output", "json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        println!("balance-leaders: {answer}");
        assert_eq!(answer["not_preferred"], 2, "{answer}");
        assert_eq!(answer["brokers"].as_array().unwrap().len(), 3, "{answer}");
        assert!(answer["elections"].as_u64().unwrap() <= 2, "{answer}");
        wait_preferred(&admin, &cluster, &topic, Duration::from_secs(30)).await;
        wait_metric_at_least(
            &cluster.brokers[0],
            "tern_preferred_leader_elections_won_total",
            2.0,
        )
        .await;
    })
    .await;
}

/// Writes one peer-protocol frame: u32 big-endian length, then the body.
fn peer_frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn hello(version: u16, from: u64, to: u64, cluster: &str) -> Vec<u8> {
    let mut b = vec![1u8]; // hello
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&from.to_be_bytes());
    b.extend_from_slice(&to.to_be_bytes());
    b.extend_from_slice(cluster.as_bytes());
    peer_frame(&b)
}

#[test]
fn peers_of_another_cluster_version_or_node_id_are_refused_and_logged() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let broker = tern_tests::Broker::start(&dir.path().join("n1"), &["--cluster-name", "blue"]);
    // A vote request for the metadata group (kind 3, request id 7, group 0)
    // with a body that would not even decode: it must never be answered.
    let mut request = vec![3u8];
    request.extend_from_slice(&7u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(b"junk");
    for (what, greeting) in [
        ("another cluster", hello(1, 9, 1, "green")),
        ("another protocol version", hello(99, 9, 1, "blue")),
        ("another node id", hello(1, 9, 5, "blue")),
        ("no hello", peer_frame(&request)),
    ] {
        let mut s = std::net::TcpStream::connect(&broker.peer_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&greeting).unwrap();
        let _ = s.write_all(&peer_frame(&request));
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{what}: the broker answered instead of closing");
    }
    // The broker logged why, and still serves.
    std::thread::sleep(Duration::from_millis(200));
    let log = broker.log();
    assert!(log.matches("refused peer").count() >= 3, "{log}");
    assert!(log.contains("peer sent no hello"), "{log}");
    assert_eq!(broker.http("/ready").map(|(c, _)| c), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_must_match_to_join_and_switch_with_a_whole_cluster_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(120), async {
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        // The cluster runs the default `exclusive` lock plugin: a broker
        // running another is refused before it becomes a voter.
        let four = cluster.start_joining(dir.path(), &["--lock-plugin", "read-write"]);
        let peer = cluster.brokers[four].peer_addr.clone();
        let err = admin.add_broker(4, &peer).await.unwrap_err();
        assert!(
            err.to_string().contains(
                "runs coordination plugins lock=read-write balancer=sticky but the cluster runs lock=exclusive balancer=sticky"
            ),
            "{err}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.controller().await.is_err() || client.brokers().len() != 3 {
            assert!(Instant::now() < deadline, "{:?}", client.brokers());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The same broker with the cluster's plugin joins.
        cluster.brokers[four].kill9();
        let four = cluster.start_joining(dir.path(), &[]);
        let peer = cluster.brokers[four].peer_addr.clone();
        admin.add_broker(5, &peer).await.unwrap();
        cluster.brokers[four].wait_ready();

        // A member restarted alone with another balancer is refused: the
        // running brokers decide with the old one.
        let members = [0, 1, 2, four];
        cluster.brokers[0].add_arg("--balancer-plugin");
        cluster.brokers[0].add_arg("round-robin");
        cluster.brokers[0].restart_no_wait();
        assert_eq!(
            cluster.brokers[0].wait_exit(Duration::from_secs(20)),
            Some(false),
            "a broker with another balancer must stop"
        );
        assert!(cluster.brokers[0].log().contains("balancer=round-robin but broker"));

        // The whole cluster restarted with the read-write lock plugin (and
        // the new balancer) switches semantics: readers now share.
        for &i in &members[1..] {
            cluster.brokers[i].terminate();
            cluster.brokers[i].add_arg("--balancer-plugin");
            cluster.brokers[i].add_arg("round-robin");
        }
        for &i in &members {
            cluster.brokers[i].add_arg("--lock-plugin");
            cluster.brokers[i].add_arg("read-write");
            cluster.brokers[i].restart_no_wait();
        }
        for &i in &members {
            cluster.brokers[i].wait_ready();
        }
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let locks = tern_client::LockClient::new(client);
        let shared = |wait| tern_client::LockOptions {
            lease: Duration::from_secs(5),
            wait,
            mode: tern_client::LockMode::Shared,
        };
        let r1 = locks.acquire_with("after-switch", shared(None)).await.unwrap();
        let r2 = locks
            .acquire_with("after-switch", shared(Some(Duration::ZERO)))
            .await
            .expect("read-write semantics after the switch");
        r1.release().await.unwrap();
        r2.release().await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------- elastic placement (#15)

/// Replicas a plan adds (each move's `to` less its `from`).
fn replicas_added(plan: &RebalanceResponse) -> usize {
    plan.moves
        .iter()
        .map(|m| m.to.iter().filter(|b| !m.from.contains(b)).count())
        .sum()
}

/// Each partition's replicas as broker indexes (node id - 1), from the
/// catalogue as `admin` reads it.
async fn replica_indexes(admin: &Admin, topic: &str) -> Vec<Vec<usize>> {
    admin
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.replicas.iter().map(|r| *r as usize - 1).collect())
        .collect()
}

/// The newest rebalance once it is newer than plan `than` (any broker's
/// copy of the metadata answers; one that has not applied the newest plan
/// yet answers an older one).
async fn plan_after(admin: &Admin, than: u64) -> RebalanceResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let plan = admin.rebalance_status().await.unwrap();
        if plan.plan_id > than {
            return plan;
        }
        assert!(
            Instant::now() < deadline,
            "no plan newer than {than}: {plan:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until every partition of `topic` is on the brokers the
/// rendezvous placement over `brokers` names (as sets).
async fn wait_placed(admin: &Admin, topic: &str, brokers: &[u64], rf: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = admin.describe_topic(topic).await.unwrap();
        let off: Vec<(u32, Vec<u32>)> = t
            .partitions
            .iter()
            .filter(|p| {
                let mut want = placed(topic, p.partition, brokers, rf);
                let mut got = p.replicas.clone();
                want.sort();
                got.sort();
                want != got
            })
            .map(|p| (p.partition, p.replicas.clone()))
            .collect();
        if off.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not where the placement over {brokers:?} puts them: {off:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue #15, item 2: 3 → 4 → 5 brokers under keyed acks=all load with
/// `--auto-rebalance`: each join starts a plan by itself that moves about
/// 1/N of the replicas (within ±35 %), every one of them onto the
/// newcomer, after which every partition sits where the rendezvous
/// placement over the new membership puts it; then removing broker 5 moves
/// exactly the replicas it held and nothing else. Nothing acknowledged is
/// lost, duplicated or reordered, and every partition's replicas converge
/// byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_grows_3_to_5_brokers_moving_one_in_n_and_a_removal_moves_only_its_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &["--auto-rebalance"]);
    bounded(Duration::from_secs(600), async {
        const TOPIC: &str = "elastic";
        const PARTITIONS: u32 = 24;
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        admin
            .create_topic(TOPIC, NewTopic::new(PARTITIONS))
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let producer = spawn_producer(
            client.clone(),
            TOPIC,
            1,
            stop.clone(),
            acked.clone(),
            failed.clone(),
        );
        let mut last_plan = 0;
        for n in [4u32, 5] {
            let index = cluster.start_joining(dir.path(), &["--auto-rebalance"]);
            let peer = cluster.brokers[index].peer_addr.clone();
            admin.add_broker(n, &peer).await.unwrap();
            cluster.brokers[index].wait_ready();
            // The broker that added it started the plan before answering.
            let plan = plan_after(&admin, last_plan).await;
            last_plan = plan.plan_id;
            let done = admin
                .wait_rebalance(plan.plan_id, Duration::from_secs(240))
                .await
                .unwrap();
            assert_eq!(done.state, PlanState::Finished, "{done:?}");
            let moved = replicas_added(&done);
            let expected = f64::from(PARTITIONS * 3) / f64::from(n);
            println!(
                "{} -> {n} brokers: {moved} of {} replicas moved (1/N = {expected:.1})",
                n - 1,
                PARTITIONS * 3
            );
            assert!(
                (moved as f64 - expected).abs() <= 0.35 * expected,
                "{moved} replicas moved, 1/N is {expected:.1}: {done:?}"
            );
            for m in &done.moves {
                let added: Vec<&u32> = m.to.iter().filter(|b| !m.from.contains(b)).collect();
                assert_eq!(added, vec![&n], "a move not onto the newcomer: {m:?}");
            }
            let brokers: Vec<u64> = (1..=u64::from(n)).collect();
            wait_placed(&admin, TOPIC, &brokers, 3).await;
        }
        // 5 -> 4: exactly broker 5's replicas move, each to one other broker.
        let before = admin.describe_topic(TOPIC).await.unwrap();
        let holding: usize = before
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&5))
            .count();
        admin
            .remove_broker(5, Duration::from_secs(240))
            .await
            .unwrap();
        let plan = plan_after(&admin, last_plan).await;
        let plan = admin
            .wait_rebalance(plan.plan_id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(plan.state, PlanState::Finished, "{plan:?}");
        assert_eq!(plan.moves.len(), holding, "{plan:?}");
        for m in &plan.moves {
            let kept: Vec<&u32> = m.from.iter().filter(|b| **b != 5).collect();
            assert!(m.from.contains(&5) && !m.to.contains(&5), "{m:?}");
            assert!(kept.iter().all(|b| m.to.contains(b)), "{m:?}");
        }
        wait_placed(&admin, TOPIC, &[1, 2, 3, 4], 3).await;

        stop.store(true, std::sync::atomic::Ordering::Release);
        producer.await.unwrap();
        let replicas = replica_indexes(&admin, TOPIC).await;
        let logs = converged_replicas(&cluster, TOPIC, &replicas).await;
        let acked = acked.lock().unwrap().clone();
        println!(
            "{} acknowledged during the moves, {} failed\n{}",
            acked.len(),
            failed.load(std::sync::atomic::Ordering::Relaxed),
            check(&logs, &acked, &[])
        );
        assert!(acked.len() > 1_000);
    })
    .await;
}

/// Issue #15, item 2: a rebalance stored in the metadata group survives a
/// SIGKILL of the metadata leader in the middle and completes; its
/// throttle bounds the copy: moving B bytes at T bytes/s takes at least
/// (B - one AppendEntries) / T. (An AppendEntries carries at most 512
/// entries, openraft's `max_payload_entries` here; with batches of at most
/// 4 KiB that is under 2.5 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_rebalance_resumes_after_the_metadata_leader_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(400), async {
        const TOPIC: &str = "heavy";
        const PARTITIONS: u32 = 6;
        const THROTTLE: u64 = 1 << 20;
        const APPEND_BYTES_MAX: u64 = 512 * (5 << 10);
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        let mut settings = NewTopic::new(PARTITIONS);
        settings.replication_factor = 1;
        admin.create_topic(TOPIC, settings).await.unwrap();
        // About 3 MiB per partition, in 1 KiB records and batches of at
        // most 4 KiB (so a move spans several AppendEntries).
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                batch_bytes_max: 4 << 10,
                ..ProducerConfig::default()
            },
        );
        let mut deliveries = Vec::new();
        for i in 0..(PARTITIONS * 3 * 1024) {
            let record = ProducerRecord::new(TOPIC, Bytes::from(vec![b'x'; 1000]))
                .with_partition(i % PARTITIONS);
            deliveries.push(producer.enqueue(record).await.unwrap());
        }
        let mut acked = 0usize;
        for d in deliveries {
            d.await.unwrap();
            acked += 1;
        }
        // Move everything off the broker holding the most partitions.
        let placement = replica_indexes(&admin, TOPIC).await;
        let busiest = (0..3)
            .max_by_key(|b| placement.iter().filter(|r| r.contains(b)).count())
            .unwrap();
        let leaving = busiest as u32 + 1;
        let started = Instant::now();
        let plan = admin
            .rebalance(&RebalanceOptions {
                max_concurrent_moves: 1,
                throttle_bytes_per_sec: THROTTLE,
                exclude: vec![leaving],
                ..RebalanceOptions::default()
            })
            .await
            .unwrap();
        assert!(plan.moves.len() >= 2, "{plan:?}");
        // Once a move is done and others are left, kill the metadata leader.
        loop {
            let now = admin.rebalance_status().await.unwrap();
            if now.plan_id == plan.plan_id {
                assert_eq!(
                    now.state,
                    PlanState::Running,
                    "finished before the kill: {now:?}"
                );
                if now.moves.iter().any(|m| m.done) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let controller = client.controller().await.unwrap() as usize - 1;
        println!("killing the metadata leader, broker {}", controller + 1);
        cluster.brokers[controller].kill9();
        cluster.brokers[controller].restart();
        cluster.wait_ready();
        let done = admin
            .wait_rebalance(plan.plan_id, Duration::from_secs(240))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(done.state, PlanState::Finished, "{done:?}");
        let bytes: u64 = done.moves.iter().map(|m| m.bytes).sum();
        println!(
            "moved {} partitions, {bytes} bytes, in {took:?} at a throttle of {THROTTLE} B/s",
            done.moves.len()
        );
        assert!(
            bytes > 2 * APPEND_BYTES_MAX,
            "too little to measure: {done:?}"
        );
        let floor = Duration::from_secs_f64((bytes - APPEND_BYTES_MAX) as f64 / THROTTLE as f64);
        assert!(
            took >= floor,
            "{bytes} bytes moved in {took:?}: the throttle did not hold\n{}",
            cluster.logs()
        );
        let others: Vec<u64> = (1..=3).filter(|b| *b != u64::from(leaving)).collect();
        wait_placed(&admin, TOPIC, &others, 1).await;
        // Every record is still there, once, on the new replicas.
        let replicas = replica_indexes(&admin, TOPIC).await;
        let logs = converged_replicas(&cluster, TOPIC, &replicas).await;
        let stored: usize = logs.iter().map(|p| p[0].1.records.len()).sum();
        assert_eq!(stored, acked);
    })
    .await;
}

/// Issue #15, item 4: six brokers in three racks; with RF 3 every
/// partition spans the three racks, and losing a whole rack (two brokers
/// SIGKILLed) keeps every partition writable, with every acknowledged
/// record readable afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_span_racks_and_a_lost_rack_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rack = |i: usize| format!("rack-{}", i / 2);
    let mut cluster =
        Cluster::start_each(dir.path(), 6, &[], &|i| vec!["--rack".to_owned(), rack(i)]);
    bounded(Duration::from_secs(300), async {
        const TOPIC: &str = "racked";
        const PARTITIONS: u32 = 12;
        // One seed: admin requests go to broker 1, whose copy of the
        // catalogue places the topic. Wait until it knows all six racks
        // (each broker registers its own as it starts).
        let client = Client::connect_with(&cluster.brokers[0].addr, fault_client_config())
            .await
            .unwrap();
        let admin = Admin::new(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let plan = admin
                .rebalance(&RebalanceOptions {
                    dry_run: true,
                    ..RebalanceOptions::default()
                })
                .await
                .unwrap();
            if plan.racks.len() == 6 {
                break;
            }
            assert!(Instant::now() < deadline, "racks known: {:?}", plan.racks);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin
            .create_topic(TOPIC, NewTopic::new(PARTITIONS))
            .await
            .unwrap();
        let placement = replica_indexes(&admin, TOPIC).await;
        for (p, replicas) in placement.iter().enumerate() {
            let racks: std::collections::BTreeSet<String> =
                replicas.iter().map(|i| rack(*i)).collect();
            assert_eq!(racks.len(), 3, "partition {p} on {replicas:?}");
        }
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let mut acked = Vec::new();
        for i in 0..600u32 {
            if i == 300 {
                // Rack 2 (brokers 5 and 6) goes dark.
                cluster.brokers[4].kill9();
                cluster.brokers[5].kill9();
            }
            let value = format!("r{i}");
            let at = producer
                .send(ProducerRecord::new(TOPIC, value.clone()).with_partition(i % PARTITIONS))
                .await
                .unwrap();
            acked.push((at.partition, at.offset, value));
        }
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer
            .assign(
                TOPIC,
                &(0..PARTITIONS).collect::<Vec<_>>(),
                Offset::Earliest,
            )
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < acked.len() {
            assert!(
                Instant::now() < deadline,
                "read {} of {}",
                seen.len(),
                acked.len()
            );
            for r in consumer.poll().await.unwrap() {
                seen.insert((
                    r.partition,
                    r.offset,
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                ));
            }
        }
        for a in &acked {
            assert!(seen.contains(a), "acknowledged {a:?} not read back");
        }
    })
    .await;
}

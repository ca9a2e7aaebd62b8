//! Coordination specification: distributed locks and consumer groups on a
//! real 3-broker cluster, with both lock plugins and both balancer plugins,
//! under SIGKILL, SIGSTOP and network partitions of brokers and crashes of
//! clients.
//!
//! The lock-safety campaign is seeded: `TERN_LOCK_SEED` replays a schedule
//! and `TERN_LOCK_SECS` lengthens it (CI runs a short one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_client::{
    Admin, Client, Consumer, ConsumerConfig, ErrorCode, LockClient, LockMode, LockOptions,
    NewTopic, Producer, ProducerConfig, ProducerRecord,
};
use tern_tests::{bin, bounded, fault_client_config, Cluster};

async fn connect(cluster: &Cluster) -> Client {
    Client::connect_with(&cluster.seeds(), fault_client_config())
        .await
        .expect("connect")
}

/// Index of the metadata leader (node id - 1), as the cluster reports it.
async fn metadata_leader(client: &Client) -> usize {
    loop {
        if let Ok(c) = client.controller().await {
            if c > 0 {
                return c as usize - 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exclusive(lease_ms: u64, wait: Option<Duration>) -> LockOptions {
    LockOptions {
        lease: Duration::from_millis(lease_ms),
        wait,
        mode: LockMode::Exclusive,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_fifo_fenced_and_survive_failover_and_holder_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(120), async {
        let client = connect(&cluster).await;
        let locks = LockClient::new(client.clone());
        let a = locks
            .acquire_with("job", exclusive(2_000, None))
            .await
            .unwrap();
        // Two waiters, in a known order.
        let (b_locks, c_locks) = (locks.clone(), locks.clone());
        let b = tokio::spawn(async move {
            b_locks
                .acquire_with("job", exclusive(2_000, Some(Duration::from_secs(60))))
                .await
        });
        let waiting = |n: usize| {
            let locks = locks.clone();
            async move {
                loop {
                    let list = locks.list().await.unwrap();
                    if list.iter().any(|l| l.name == "job" && l.waiters.len() == n) {
                        return list;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        waiting(1).await;
        let c = tokio::spawn(async move {
            c_locks
                .acquire_with("job", exclusive(2_000, Some(Duration::from_secs(60))))
                .await
        });
        waiting(2).await;

        // The metadata leader dies: holder and waiters keep their places.
        let leader = metadata_leader(&client).await;
        cluster.brokers[leader].kill9();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!a.is_lost(), "the holder kept its lease across failover");
        let list = waiting(2).await;
        let job = list.iter().find(|l| l.name == "job").unwrap();
        assert_eq!(job.holders[0].owner, a.owner(), "holder survived failover");

        let a_token = a.token();
        a.release().await.unwrap();
        let b = b.await.unwrap().unwrap();
        assert!(
            b.token() > a_token,
            "tokens grow: {} > {a_token}",
            b.token()
        );
        assert!(!c.is_finished(), "FIFO: the second waiter still waits");
        let b_token = b.token();
        drop(b); // releases in the background
        let c = c.await.unwrap().unwrap();
        assert!(c.token() > b_token);
        c.release().await.unwrap();
        cluster.brokers[leader].restart();

        // A holder that crashes loses the lock when its lease ends; the
        // next waiter gets it, and `tern lock run` passes the token on.
        let mut holder = Command::new(bin("tern"))
            .args([
                "--broker",
                &cluster.seeds(),
                "lock",
                "acquire",
                "crashy",
                "--lease",
                "1s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let crashed_token: u64 = {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(holder.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            line.trim()
                .parse()
                .expect("tern lock acquire prints the token")
        };
        holder.kill().unwrap(); // SIGKILL
        holder.wait().unwrap();
        let started = Instant::now();
        let seeds = cluster.seeds();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin("tern"))
                .args([
                    "--broker", &seeds, "lock", "run", "crashy", "--wait", "20s", "--",
                ])
                .args([
                    "sh",
                    "-c",
                    "echo token=$TERN_FENCING_TOKEN lock=$TERN_LOCK_NAME",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let waited = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let token: u64 = stdout
            .trim()
            .strip_prefix("token=")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
        assert!(stdout.contains("lock=crashy"));
        assert!(token > crashed_token);
        assert!(
            waited < Duration::from_secs(5),
            "granted {waited:?} after the holder died (lease 1 s)"
        );
        // The command exits with the child's status.
        let status = Command::new(bin("tern"))
            .args([
                "--broker",
                &cluster.seeds(),
                "lock",
                "run",
                "crashy",
                "--",
                "sh",
                "-c",
                "exit 3",
            ])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        // A try-lock on a held lock times out with a clear code.
        let held = locks
            .acquire_with("busy", exclusive(5_000, None))
            .await
            .unwrap();
        // An acquire abandoned by its caller leaves the queue.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            locks.acquire_with("busy", exclusive(5_000, None)),
        )
        .await;
        assert!(abandoned.is_err(), "the lock is held: the acquire waits");
        loop {
            let list = locks.list().await.unwrap();
            let busy = list.iter().find(|l| l.name == "busy").unwrap();
            if busy.waiters.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = locks
            .acquire_with("busy", exclusive(5_000, Some(Duration::ZERO)))
            .await
            .err()
            .expect("held elsewhere");
        assert_eq!(refused.code(), Some(ErrorCode::LockWaitTimeout));
        held.release().await.unwrap();
        let list = locks.list().await.unwrap();
        assert!(
            list.iter().all(|l| l.name != "busy"),
            "released locks leave no record: {list:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_plugin_shares_readers_and_round_robin_balances_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        dir.path(),
        3,
        &[
            "--lock-plugin",
            "read-write",
            "--balancer-plugin",
            "round-robin",
        ],
    );
    bounded(Duration::from_secs(90), async {
        let client = connect(&cluster).await;
        let locks = LockClient::new(client.clone());
        let shared = |wait| LockOptions {
            lease: Duration::from_secs(5),
            wait,
            mode: LockMode::Shared,
        };
        let r1 = locks.acquire_with("table", shared(None)).await.unwrap();
        let r2 = locks
            .acquire_with("table", shared(Some(Duration::ZERO)))
            .await
            .expect("readers share");
        let w = locks
            .acquire_with("table", exclusive(5_000, Some(Duration::from_millis(300))))
            .await;
        assert_eq!(
            w.err().and_then(|e| e.code()),
            Some(ErrorCode::LockWaitTimeout)
        );
        let writer_locks = locks.clone();
        let writer = tokio::spawn(async move {
            writer_locks
                .acquire_with("table", exclusive(5_000, Some(Duration::from_secs(30))))
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A new reader queues behind the waiting writer (no starvation).
        let late = locks
            .acquire_with("table", shared(Some(Duration::from_millis(200))))
            .await;
        assert_eq!(
            late.err().and_then(|e| e.code()),
            Some(ErrorCode::LockWaitTimeout)
        );
        let top = r1.token().max(r2.token());
        r1.release().await.unwrap();
        assert!(!writer.is_finished());
        r2.release().await.unwrap();
        let w = writer.await.unwrap().unwrap();
        assert!(w.token() > top);
        w.release().await.unwrap();

        // Round-robin: 2 members of 4 partitions own alternate ones.
        Admin::new(client.clone())
            .create_topic("rr", NewTopic::new(4))
            .await
            .unwrap();
        let config = ConsumerConfig {
            max_wait: Duration::from_millis(100),
            session_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let mut c1 = Consumer::new(client.clone(), config.clone());
        c1.subscribe("rr-group", &["rr"]).await.unwrap();
        let mut c2 = Consumer::new(client.clone(), config);
        c2.subscribe("rr-group", &["rr"]).await.unwrap();
        while c1.generation() != c2.generation() {
            c1.poll().await.unwrap();
        }
        let (first, second) = if c1.member_id() < c2.member_id() {
            (c1.assignment(), c2.assignment())
        } else {
            (c2.assignment(), c1.assignment())
        };
        let parts = |v: Vec<(String, u32)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        assert_eq!(parts(first), vec![0, 2]);
        assert_eq!(parts(second), vec![1, 3]);
        c1.close().await.unwrap();
        c2.close().await.unwrap();
    })
    .await;
}

/// The protected resource of the lock-safety checker: it accepts a write
/// only with a token at least the largest it has accepted, and records
/// every write a client made while it believed it held the lock.
#[derive(Default)]
struct Resource {
    top_token: u64,
    /// Accepted `(token, client)` in order.
    accepted: Vec<(u64, usize)>,
    /// Writes refused although the writer's guard said it held the lock:
    /// two holders at once, as the resource sees it.
    overlapping: Vec<String>,
    fenced: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_safety_holds_under_kills_pauses_and_partitions() {
    let seed: u64 = std::env::var("TERN_LOCK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let secs: u64 = std::env::var("TERN_LOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    eprintln!("lock campaign: TERN_LOCK_SEED={seed} TERN_LOCK_SECS={secs}");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_partitionable(dir.path(), 3, &[]);
    let seeds = cluster.seeds();
    let names = ["alpha", "beta"];
    let resources: Arc<Mutex<HashMap<&'static str, Resource>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let grants = Arc::new(Mutex::new(Vec::<(&'static str, u64, usize)>::new()));
    let mut clients = Vec::new();
    for id in 0..6usize {
        let (resources, stop, grants, seeds) = (
            resources.clone(),
            stop.clone(),
            grants.clone(),
            seeds.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = Client::connect_with(&seeds, fault_client_config())
                .await
                .unwrap();
            let locks = LockClient::new(client);
            let mut rng = StdRng::seed_from_u64(seed ^ id as u64);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let name = names[rng.random_range(0..names.len())];
                let got = locks
                    .acquire_with(name, exclusive(1_000, Some(Duration::from_secs(2))))
                    .await;
                let Ok(guard) = got else { continue };
                grants.lock().unwrap().push((name, guard.token(), id));
                // One hold in ten, the holder stalls (a GC pause, a frozen
                // VM: its renewals stop too) past its lease between checking
                // its guard and writing: only the fencing token can stop
                // that write once another client holds the lock.
                if rng.random_bool(0.1) && !guard.is_lost() {
                    let token = guard.token();
                    guard.abandon();
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    let mut all = resources.lock().unwrap();
                    let r = all.entry(name).or_default();
                    if token >= r.top_token {
                        r.top_token = token;
                        r.accepted.push((token, id));
                    } else {
                        r.fenced += 1;
                    }
                    continue;
                }
                for _ in 0..rng.random_range(1..6) {
                    if guard.is_lost() {
                        break;
                    }
                    {
                        let mut all = resources.lock().unwrap();
                        let r = all.entry(name).or_default();
                        if guard.token() >= r.top_token {
                            r.top_token = guard.token();
                            r.accepted.push((guard.token(), id));
                        } else if !guard.is_lost() {
                            r.overlapping.push(format!(
                                "client {id} wrote with token {} after token {} was used",
                                guard.token(),
                                r.top_token
                            ));
                        } else {
                            r.fenced += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
                }
                let _ = guard.release().await;
            }
        }));
    }
    // Faults: one broker at a time killed, paused or cut off, then back.
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults = 0;
    while Instant::now() < deadline {
        let victim = rng.random_range(0..3);
        let kind = rng.random_range(0..3);
        match kind {
            0 => cluster.brokers[victim].kill9(),
            1 => cluster.brokers[victim].pause(),
            _ => cluster.isolate(victim),
        }
        faults += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        match kind {
            0 => cluster.brokers[victim].restart(),
            1 => cluster.brokers[victim].resume(),
            _ => cluster.heal(),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for c in clients {
        bounded(Duration::from_secs(30), c).await.unwrap();
    }
    let resources = resources.lock().unwrap();
    let grants = grants.lock().unwrap();
    let mut report = Vec::new();
    for name in names {
        let tokens: Vec<u64> = grants.iter().filter(|g| g.0 == name).map(|g| g.1).collect();
        let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            tokens.len(),
            "{name}: a token was granted twice"
        );
        if let Some(r) = resources.get(name) {
            assert!(r.overlapping.is_empty(), "{name}: {:?}", r.overlapping);
            // Accepted tokens never go back, and one token is one client.
            let mut owner_of: BTreeMap<u64, usize> = BTreeMap::new();
            for w in r.accepted.windows(2) {
                assert!(w[0].0 <= w[1].0, "{name}: accepted tokens went back: {w:?}");
            }
            for (token, client) in &r.accepted {
                assert_eq!(*owner_of.entry(*token).or_insert(*client), *client);
            }
            report.push(format!(
                "{name}: {} grants, {} writes accepted, {} fenced",
                tokens.len(),
                r.accepted.len(),
                r.fenced
            ));
        }
    }
    let total: usize = grants.len();
    eprintln!("lock campaign seed {seed}: {faults} faults, {total} grants; {report:?}");
    assert!(total >= 20, "too few grants ({total}) to mean anything");
}

/// Records consumed by a group member: `(partition, offset)` with the
/// member and generation that consumed it.
type Consumed = Arc<Mutex<Vec<(u32, u64, u64, u64)>>>;

fn spawn_member(
    client: Client,
    group: &'static str,
    consumed: Consumed,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = ConsumerConfig {
            max_wait: Duration::from_millis(200),
            session_timeout: Duration::from_secs(3),
            auto_commit_interval: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let mut consumer = Consumer::new(client, config);
        consumer.subscribe(group, &["events"]).await.unwrap();
        let member = consumer.member_id().unwrap();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            match consumer.poll().await {
                Ok(records) => {
                    let generation = consumer.generation();
                    let mut c = consumed.lock().unwrap();
                    for r in records {
                        c.push((r.partition, r.offset, member, generation));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = consumer.close().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_share_partitions_and_survive_member_and_broker_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    bounded(Duration::from_secs(180), async {
        let client = connect(&cluster).await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic("events", NewTopic::new(12))
            .await
            .unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                linger: Duration::from_millis(2),
                retries: 300,
                retry_backoff: Duration::from_millis(100),
                ..Default::default()
            },
        );
        let produce = |from: u32, to: u32| {
            let producer = producer.clone();
            async move {
                let mut acked = Vec::new();
                for i in from..to {
                    let m = producer
                        .send(ProducerRecord::new("events", Bytes::from(i.to_string())).with_partition(i % 12))
                        .await
                        .unwrap();
                    acked.push((m.partition, m.offset));
                }
                acked
            }
        };
        let mut acked = produce(0, 3_000).await;
        let consumed: Consumed = Arc::default();
        let stops: Vec<_> = (0..3)
            .map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)))
            .collect();
        let mut members: Vec<_> = stops
            .iter()
            .map(|s| spawn_member(client.clone(), "workers", consumed.clone(), s.clone()))
            .collect();
        // Committed offsets never go back: watched all along.
        let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (admin, stop) = (Admin::new(client.clone()), watch_stop.clone());
            tokio::spawn(async move {
                let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
                let mut backwards = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    if let Ok(info) = admin.describe_group("workers").await {
                        for o in info.offsets.iter().filter(|o| o.committed != u64::MAX) {
                            let last = seen.entry(o.partition).or_insert(0);
                            if o.committed < *last {
                                backwards.push((o.partition, *last, o.committed));
                            }
                            *last = (*last).max(o.committed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                backwards
            })
        };
        let members_of = |n: usize| {
            let admin = Admin::new(client.clone());
            async move {
                loop {
                    if let Ok(info) = admin.describe_group("workers").await {
                        let assigned: usize = info.members.iter().map(|m| m.assignment.len()).sum();
                        if info.members.len() == n && assigned == 12 {
                            return info;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let before = members_of(3).await;
        assert!(before.members.iter().all(|m| m.assignment.len() == 4), "sticky: 4 each");

        // A member crashes (no leave): its session ends, its partitions move.
        members[0].abort();
        let crashed_at = Instant::now();
        let after = members_of(2).await;
        let rebalance = crashed_at.elapsed();
        assert!(
            rebalance < Duration::from_secs(3 + 2),
            "crashed member removed after {rebalance:?} (session 3 s)"
        );
        let kept: usize = after
            .members
            .iter()
            .map(|m| {
                let old = before.members.iter().find(|b| b.member == m.member).unwrap();
                m.assignment.iter().filter(|p| old.assignment.contains(p)).count()
            })
            .sum();
        assert_eq!(kept, 8, "sticky: the survivors keep their 8 partitions");

        // A broker dies mid-stream (the metadata leader: the worst case).
        let leader = metadata_leader(&client).await;
        cluster.brokers[leader].kill9();
        acked.extend(produce(3_000, 6_000).await);
        cluster.brokers[leader].restart();

        // A member joins: rebalance time until it owns its share.
        let joined_at = Instant::now();
        members.push(spawn_member(client.clone(), "workers", consumed.clone(), stops[0].clone()));
        members_of(3).await;
        let join_rebalance = joined_at.elapsed();
        acked.extend(produce(6_000, 7_000).await);

        // Everything acknowledged gets consumed.
        let wanted: BTreeSet<(u32, u64)> = acked.iter().copied().collect();
        loop {
            let got: BTreeSet<(u32, u64)> =
                consumed.lock().unwrap().iter().map(|c| (c.0, c.1)).collect();
            if wanted.is_subset(&got) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ...and the group's commits catch up with the end of every partition.
        loop {
            let info = admin.describe_group("workers").await.unwrap();
            let done = info.offsets.len() == 12
                && info.offsets.iter().all(|o| o.committed == o.high_watermark);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for s in &stops {
            s.store(true, std::sync::atomic::Ordering::Release);
        }
        for m in members.into_iter().skip(1) {
            m.await.unwrap();
        }
        watch_stop.store(true, std::sync::atomic::Ordering::Release);
        let backwards = watcher.await.unwrap();
        assert!(backwards.is_empty(), "committed offsets went back: {backwards:?}");
        // No partition was read by two members in one generation.
        let mut readers: BTreeMap<(u32, u64), BTreeSet<u64>> = BTreeMap::new();
        for (partition, _, member, generation) in consumed.lock().unwrap().iter() {
            readers.entry((*partition, *generation)).or_default().insert(*member);
        }
        let shared: Vec<_> = readers.iter().filter(|(_, m)| m.len() > 1).collect();
        assert!(shared.is_empty(), "partitions read by two members of one generation: {shared:?}");
        let total = consumed.lock().unwrap().len();
        eprintln!(
            "group: {} acked, {total} consumed ({} re-deliveries), crash rebalance {rebalance:?}, join rebalance {join_rebalance:?}",
            wanted.len(),
            total - wanted.len()
        );
        let info = admin.describe_group("workers").await.unwrap();
        assert!(info.members.is_empty(), "members left: {:?}", info.members);
        // Reset works on an empty group, through the CLI.
        let out = Command::new(bin("tern"))
            .args(["--broker", &cluster.seeds(), "group", "reset-offsets", "workers", "--topic", "events", "--to-earliest"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info = admin.describe_group("workers").await.unwrap();
        assert!(info.offsets.iter().all(|o| o.committed == 0), "{:?}", info.offsets);
        let out = Command::new(bin("tern"))
            .args(["--broker", &cluster.seeds(), "group", "describe", "workers"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("events\t0\t-\t0\t"), "{text}");
    })
    .await;
}

//! The Kafka listener as Kafka users meet it: kcat (Debian's package) and
//! two client libraries nobody here wrote — confluent-kafka (librdkafka)
//! and kafka-python — produce, consume and administer Tern unchanged, and
//! see the same records as Tern's own client. Hostile Kafka frames close
//! their connection and leave the broker serving.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_client::{
    Admin, Client, Consumer, ConsumerConfig, NewTopic, Offset, Producer, ProducerConfig,
    ProducerRecord,
};
use tern_tests::{bounded, fault_client_config, Broker, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(180);

/// Runs a command to completion within `limit` (killed after it), returning
/// its stdout; panics with stdout and stderr if it failed. Output goes to
/// files, so a talkative command never blocks on a full pipe.
fn run(cmd: &mut Command, limit: Duration) -> String {
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout.reopen().unwrap())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/install-test-deps.sh installs it)"));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(stdout.path()).unwrap_or_default();
    let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("{cmd:?} failed: {s}\nstdout:\n{out}\nstderr:\n{err}"),
        None => panic!("{cmd:?} still running after {limit:?}\nstdout:\n{out}\nstderr:\n{err}"),
    }
}

fn clients_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/clients.py")
}

/// The Python clients' command: `clients.py CMD ARGS...`.
fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(clients_py()).args(args);
    c
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

async fn create_topic(broker: &Broker, name: &str, partitions: u32) {
    let admin = Admin::new(Client::connect(&broker.addr).await.unwrap());
    admin
        .create_topic(name, NewTopic::new(partitions))
        .await
        .expect("create topic");
}

/// kcat lists metadata (the broker on its Kafka address, the topic and its
/// partitions), produces keyed records from a file, and consumes them with
/// topic, partition, offset, key and value; Tern's own client reads the
/// same records, and kcat reads what Tern's client produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_lists_produces_and_consumes_and_tern_sees_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let kafka = broker.kafka_addr.clone();
    bounded(LIMIT, async {
        create_topic(&broker, "orders", 3).await;
        let listing = run(
            Command::new("kcat").args(["-b", &kafka, "-L", "-t", "orders"]),
            LIMIT,
        );
        assert!(
            listing.contains(&format!("broker 1 at {kafka}")),
            "{listing}"
        );
        assert!(
            listing.contains("topic \"orders\" with 3 partitions"),
            "{listing}"
        );

        let input = dir.path().join("records.txt");
        let mut f = std::fs::File::create(&input).unwrap();
        for i in 0..100 {
            writeln!(f, "key{}:value{i}", i % 7).unwrap();
        }
        drop(f);
        run(
            Command::new("kcat")
                .args(["-b", &kafka, "-P", "-t", "orders", "-K:", "-l"])
                .arg(&input),
            LIMIT,
        );
        let consumed = run(
            Command::new("kcat").args([
                "-b",
                &kafka,
                "-C",
                "-t",
                "orders",
                "-o",
                "beginning",
                "-e",
                "-f",
                "%t %p %o %k %s\n",
            ]),
            LIMIT,
        );
        let mut lines: Vec<(u32, u64, String, String)> = consumed
            .lines()
            .map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                assert_eq!(parts[0], "orders", "{l}");
                (
                    parts[1].parse().unwrap(),
                    parts[2].parse().unwrap(),
                    parts[3].into(),
                    parts[4].into(),
                )
            })
            .collect();
        assert_eq!(lines.len(), 100, "{consumed}");
        // Same key, same partition; offsets per partition 0, 1, 2...
        lines.sort();
        for (key, values) in (0..7).map(|k| {
            let key = format!("key{k}");
            let v: Vec<_> = lines.iter().filter(|l| l.2 == key).collect();
            (key, v)
        }) {
            assert!(
                values.iter().all(|l| l.0 == values[0].0),
                "{key} spread over partitions"
            );
        }

        // Tern's client reads what kcat wrote, with the same keys.
        let client = Client::connect(&broker.addr).await.unwrap();
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer
            .assign_all("orders", Offset::Earliest)
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 100 {
            for r in consumer.poll().await.unwrap() {
                let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                seen.push((r.partition, r.offset, key, value));
            }
        }
        seen.sort();
        assert_eq!(seen, lines);

        // kcat's balanced consumer (-G) reads all of it in a group and
        // commits; Tern's group describe shows those offsets.
        let grouped = run(
            Command::new("kcat").args([
                "-b",
                &kafka,
                "-G",
                "kcat-group",
                "orders",
                "-o",
                "beginning",
                "-e",
                "-f",
                "%k\n",
            ]),
            LIMIT,
        );
        assert_eq!(grouped.lines().count(), 100, "{grouped}");
        let admin = Admin::new(client.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let group = admin.describe_group("kcat-group").await.unwrap();
            let committed: u64 = group.offsets.iter().map(|o| o.committed).sum();
            if committed == 100 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kcat's commits: {group:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A header and timestamp kcat sets reach Tern's consumer as sent.
        create_topic(&broker, "stamped", 1).await;
        let stamped = dir.path().join("stamped.txt");
        std::fs::write(&stamped, "hello\n").unwrap();
        run(
            Command::new("kcat")
                .args([
                    "-b",
                    &kafka,
                    "-P",
                    "-t",
                    "stamped",
                    "-H",
                    "origin=kcat",
                    "-k",
                    "kk",
                    "-l",
                ])
                .arg(&stamped),
            LIMIT,
        );
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer
            .assign_all("stamped", Offset::Earliest)
            .await
            .unwrap();
        let record = loop {
            if let Some(r) = consumer.poll().await.unwrap().into_iter().next() {
                break r;
            }
        };
        assert_eq!(record.key.as_deref(), Some(&b"kk"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            record.headers,
            vec![("origin".to_string(), bytes::Bytes::from("kcat"))]
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now_ms - record.timestamp_ms).abs() < 600_000,
            "timestamp {}",
            record.timestamp_ms
        );

        // And kcat reads what Tern's client wrote, headers included.
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let mut record = ProducerRecord::new("orders", "from-tern").with_key("tern-key");
        record.headers.push(("origin".into(), "tern".into()));
        producer.send(record).await.unwrap();
        let consumed = run(
            Command::new("kcat").args([
                "-b",
                &kafka,
                "-C",
                "-t",
                "orders",
                "-o",
                "beginning",
                "-e",
                "-f",
                "%k %s %h\n",
            ]),
            LIMIT,
        );
        assert!(
            consumed.contains("tern-key from-tern origin=tern"),
            "{consumed}"
        );
    })
    .await;
}

/// librdkafka's idempotent producer (acks=all) with every codec, then
/// kafka-python, write; each client reads everything back exactly once, in
/// order per key, with headers; the broker's Kafka metrics count it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_and_kafka_python_produce_and_consume_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let kafka = broker.kafka_addr.clone();
    bounded(LIMIT, async {
        create_topic(&broker, "events", 4).await;
        let per_codec = 2_000;
        let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
        for codec in codecs {
            let out = run(
                &mut python(&[
                    "confluent-produce",
                    &kafka,
                    "events",
                    &per_codec.to_string(),
                    codec,
                ]),
                LIMIT,
            );
            assert_eq!(json_lines(&out)[0]["acked"], per_codec, "{codec}: {out}");
        }
        let total = per_codec * codecs.len();
        let out = run(
            &mut python(&["confluent-consume", &kafka, "events", &total.to_string()]),
            LIMIT,
        );
        let records = json_lines(&out);
        assert_eq!(records.len(), total);
        // Exactly once: every (codec round, i) value appears once; per key,
        // values are in production order.
        let mut by_key: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
        for r in &records {
            let n: u64 = r["h"]["n"].as_str().unwrap().parse().unwrap();
            assert_eq!(r["v"].as_str().unwrap(), format!("v{n}"));
            by_key
                .entry(r["k"].as_str().unwrap().to_string())
                .or_default()
                .push((r["o"].as_u64().unwrap(), n));
        }
        for (key, mut seq) in by_key {
            seq.sort();
            let ns: Vec<u64> = seq.iter().map(|s| s.1).collect();
            let expected: Vec<u64> = (0..codecs.len() as u64)
                .flat_map(|_| (0..per_codec as u64).filter(|i| format!("k{}", i % 10) == key))
                .collect();
            assert_eq!(ns, expected, "key {key}: lost, duplicated or reordered");
        }

        let out = run(
            &mut python(&["kafka-python-produce", &kafka, "events", "500"]),
            LIMIT,
        );
        assert_eq!(json_lines(&out)[0]["acked"], 500);
        let out = run(
            &mut python(&[
                "kafka-python-consume",
                &kafka,
                "events",
                &(total + 500).to_string(),
            ]),
            LIMIT,
        );
        let records = json_lines(&out);
        let py: Vec<_> = records
            .iter()
            .filter(|r| r["v"].as_str().unwrap().starts_with("py"))
            .collect();
        assert_eq!(py.len(), 500);

        let (_, metrics) = broker.http("/metrics").unwrap();
        assert!(
            tern_tests::metric_sum(&metrics, "tern_kafka_requests_total{api=\"Produce\"}") > 0.0,
            "{metrics}"
        );
        assert!(tern_tests::metric_sum(&metrics, "tern_kafka_requests_total{api=\"Fetch\"}") > 0.0);
    })
    .await;
}

/// Sends raw bytes on a fresh Kafka connection; returns what came back
/// before the broker closed it (or after 5 s).
async fn raw_exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("the broker accepts Kafka connections (is it still running?)");
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

fn kafka_frame(api: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let len = 8 + 2 + body.len();
    f.extend_from_slice(&(len as i32).to_be_bytes());
    f.extend_from_slice(&api.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    f.extend_from_slice(body);
    f
}

/// Unknown APIs, unknown versions, truncated and oversized frames, and a
/// few bytes that claim a two-billion-element array: each closes its own
/// connection (or, for ApiVersions, is told UNSUPPORTED_VERSION), and the
/// broker keeps serving Kafka and Tern clients throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_kafka_frames_close_their_connection_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let kafka = broker.kafka_addr.clone();
    bounded(LIMIT, async {
        create_topic(&broker, "safe", 1).await;
        // ApiVersions v99: answered at v0 with error 35 and the real ranges.
        let got = raw_exchange(&kafka, &kafka_frame(18, 99, &[])).await;
        assert!(got.len() > 10, "no answer to ApiVersions v99: {got:?}");
        assert_eq!(&got[4..8], &7i32.to_be_bytes(), "correlation id");
        assert_eq!(&got[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");

        let hostile: Vec<(&str, Vec<u8>)> = vec![
            ("unknown API", kafka_frame(999, 0, &[])),
            ("Metadata v99", kafka_frame(3, 99, &[])),
            ("truncated body", kafka_frame(3, 1, &[0, 0])),
            ("length past the limit", (i32::MAX).to_be_bytes().to_vec()),
            ("negative length", (-5i32).to_be_bytes().to_vec()),
            // Metadata v1, topics array claiming i32::MAX entries.
            ("array bomb", kafka_frame(3, 1, &i32::MAX.to_be_bytes())),
            // Produce v3 claiming i32::MAX topics.
            (
                "produce array bomb",
                kafka_frame(
                    0,
                    3,
                    &[0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0x7f, 0xff, 0xff, 0xff],
                ),
            ),
        ];
        for (what, bytes) in hostile {
            let got = raw_exchange(&kafka, &bytes).await;
            assert!(
                got.is_empty(),
                "{what}: expected a closed connection, got {got:?}"
            );
            assert!(
                broker.is_running(),
                "{what} killed the broker:\n{}",
                broker.log()
            );
        }
        // Still serving both protocols.
        let listing = run(Command::new("kcat").args(["-b", &kafka, "-L"]), LIMIT);
        assert!(listing.contains("topic \"safe\""), "{listing}");
        let client = Client::connect(&broker.addr).await.unwrap();
        Producer::new(client, ProducerConfig::default())
            .send(ProducerRecord::new("safe", "still here"))
            .await
            .unwrap();
        let (_, metrics) = broker.http("/metrics").unwrap();
        assert!(tern_tests::metric_sum(&metrics, "tern_kafka_protocol_violations_total") >= 6.0);
    })
    .await;
}

/// One `clients.py confluent-group-member` process: its output is a file
/// the test reads while it runs; it leaves its group when its stop file
/// appears.
struct GroupMember {
    child: std::process::Child,
    out: PathBuf,
    stop: PathBuf,
}

impl GroupMember {
    fn start(dir: &std::path::Path, name: &str, kafka: &str, topic: &str, group: &str) -> Self {
        let out = dir.join(format!("{name}.out"));
        let stop = dir.join(format!("{name}.stop"));
        let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
        let child = python(&[
            "confluent-group-member",
            kafka,
            topic,
            group,
            stop.to_str().unwrap(),
            "170",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 (scripts/install-test-deps.sh installs the modules)");
        GroupMember { child, out, stop }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // The last line may be half written.
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Partitions it holds now (after its last assign or revoke).
    fn assigned(&self) -> Vec<u64> {
        let mut now = Vec::new();
        for e in self.events() {
            if let Some(a) = e.get("assigned") {
                now = a
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_u64().unwrap())
                    .collect();
            } else if e.get("revoked").is_some() {
                now.clear();
            }
        }
        now
    }

    fn consumed(&self) -> std::collections::BTreeSet<(u64, u64)> {
        self.events()
            .iter()
            .filter_map(|e| Some((e.get("p")?.as_u64()?, e.get("o")?.as_u64()?)))
            .collect()
    }

    /// Leaves the group and exits (bounded).
    fn stop(&mut self) {
        std::fs::write(&self.stop, b"").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "a group member did not leave"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.events().iter().any(|e| e.get("closed").is_some()),
            "{:?}",
            self.events()
        );
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `members` hold disjoint, non-empty sets of
/// partitions covering `0..partitions`.
async fn wait_balanced(members: &[&GroupMember], partitions: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let sets: Vec<Vec<u64>> = members.iter().map(|m| m.assigned()).collect();
        let mut all: Vec<u64> = sets.iter().flatten().copied().collect();
        all.sort();
        if all == (0..partitions).collect::<Vec<_>>() && sets.iter().all(|s| !s.is_empty()) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let events: Vec<Vec<serde_json::Value>> = members
                .iter()
                .map(|m| {
                    m.events()
                        .into_iter()
                        .filter(|e| e.get("p").is_none())
                        .collect()
                })
                .collect();
            panic!("{what}: assignments never balanced: {sets:?}; group events {events:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A librdkafka consumer group (client-side "range" assignment) of two
/// members rebalances when a third joins and when one leaves; everything
/// produced is consumed; the committed offsets read the same through
/// Kafka's OffsetFetch and `tern group describe`, and survive a broker
/// restart; kafka-python consumes in a group of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_consumer_group_rebalances_commits_and_keeps_offsets_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("n1"), &[]);
    let kafka = broker.kafka_addr.clone();
    bounded(Duration::from_secs(300), async {
        create_topic(&broker, "jobs", 6).await;
        let client = Client::connect(&broker.addr).await.unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        for i in 0..600 {
            producer
                .send(ProducerRecord::new("jobs", format!("job-{i}")).with_key(format!("k{i}")))
                .await
                .unwrap();
        }
        let admin = Admin::new(client.clone());
        let ends: Vec<(u64, u64)> = admin
            .describe_topic("jobs")
            .await
            .unwrap()
            .partitions
            .iter()
            .map(|p| (p.partition as u64, p.high_watermark))
            .collect();
        let every: std::collections::BTreeSet<(u64, u64)> = ends
            .iter()
            .flat_map(|&(p, end)| (0..end).map(move |o| (p, o)))
            .collect();
        assert_eq!(every.len(), 600);

        let mut a = GroupMember::start(dir.path(), "a", &kafka, "jobs", "workers");
        let mut b = GroupMember::start(dir.path(), "b", &kafka, "jobs", "workers");
        wait_balanced(&[&a, &b], 6, "two members").await;
        let mut c = GroupMember::start(dir.path(), "c", &kafka, "jobs", "workers");
        wait_balanced(&[&a, &b, &c], 6, "a third member joined").await;
        b.stop();
        wait_balanced(&[&a, &c], 6, "a member left").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mut seen = a.consumed();
            seen.extend(b.consumed());
            seen.extend(c.consumed());
            if every.is_subset(&seen) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of 600 consumed",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A commit refused during a rebalance is made again by the
        // partition's next owner: wait for every partition's commit before
        // the members leave.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let group = admin.describe_group("workers").await.unwrap();
            let mut now: Vec<(u64, u64)> = group
                .offsets
                .iter()
                .map(|o| (o.partition as u64, o.committed))
                .collect();
            now.sort();
            if now == ends {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "commits stalled at {now:?}, ends {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.stop();
        c.stop();

        // Committed = log end on every partition, through both APIs.
        let expected: Vec<(u64, u64)> = ends.clone();
        let kafka_view = |out: String| {
            let mut v: Vec<(u64, u64)> = json_lines(&out)
                .iter()
                .map(|r| (r["p"].as_u64().unwrap(), r["o"].as_i64().unwrap() as u64))
                .collect();
            v.sort();
            v
        };
        let out = run(
            &mut python(&["committed", &kafka, "jobs", "workers"]),
            LIMIT,
        );
        assert_eq!(kafka_view(out), expected);
        let group = admin.describe_group("workers").await.unwrap();
        let mut tern_view: Vec<(u64, u64)> = group
            .offsets
            .iter()
            .map(|o| (o.partition as u64, o.committed))
            .collect();
        tern_view.sort();
        assert_eq!(tern_view, expected);
        drop(admin);
        drop(producer);
        drop(client);

        broker.restart();
        let out = run(
            &mut python(&["committed", &kafka, "jobs", "workers"]),
            LIMIT,
        );
        assert_eq!(kafka_view(out), expected, "offsets lost in a restart");

        let out = run(
            &mut python(&["kafka-python-group", &kafka, "jobs", "py-workers", "600"]),
            LIMIT,
        );
        assert_eq!(json_lines(&out)[0]["consumed"], 600);
        let out = run(
            &mut python(&["committed", &kafka, "jobs", "py-workers"]),
            LIMIT,
        );
        let committed: u64 = kafka_view(out).iter().map(|(_, o)| o).sum();
        assert!(committed > 0, "kafka-python committed nothing");
    })
    .await;
}

/// With authentication required, a librdkafka client authenticates with
/// SCRAM-SHA-256 over the Kafka listener and creates, produces and
/// consumes; the wrong password is refused as an authentication error, and
/// nothing else is served to a connection that did not authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_authenticate_with_scram_and_wrong_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::configure(
        &dir.path().join("n1"),
        &["--auth-required", "--bootstrap-user", "admin"],
    );
    broker.set_env("TERN_BOOTSTRAP_PASSWORD", "kafka-secret-1");
    broker.spawn();
    broker.wait_log("bootstrap user present", Duration::from_secs(60));
    let kafka = broker.kafka_addr.clone();
    let out = run(
        &mut python(&[
            "confluent-sasl",
            &kafka,
            "admin",
            "kafka-secret-1",
            "secure",
        ]),
        LIMIT,
    );
    assert_eq!(json_lines(&out)[0]["read"], "admin", "{out}");

    let mut wrong = python(&[
        "confluent-sasl",
        &kafka,
        "admin",
        "not-the-password",
        "other",
    ]);
    let status = wrong
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the wrong password was not an authentication error"
    );

    // An unauthenticated Metadata request gets its connection closed.
    let got = raw_exchange(&kafka, &kafka_frame(3, 1, &(-1i32).to_be_bytes())).await;
    assert!(got.is_empty(), "served without authentication: {got:?}");
}

/// Lines of a file another process is still writing (a half-written last
/// line is left out).
fn lines_so_far(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (bounded) until `path` holds `n` complete lines.
async fn wait_lines(path: &std::path::Path, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while lines_so_far(path).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck below {n} lines in {path:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A librdkafka idempotent producer (acks=all) keeps producing to a
/// 3-broker cluster while the leader of a partition is SIGKILLed and
/// restarted; every acknowledged record is then consumed exactly once, in
/// production order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_producer_survives_a_killed_leader_with_nothing_lost_or_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3, &[]);
    let kafka: String = cluster
        .brokers
        .iter()
        .map(|b| b.kafka_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    bounded(Duration::from_secs(300), async {
        let client = Client::connect_with(&cluster.seeds(), fault_client_config())
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topic("ha", NewTopic::new(3))
            .await
            .unwrap();
        let total = 6_000;
        let acks = dir.path().join("acks.jsonl");
        let mut producer = python(&[
            "confluent-produce-stream",
            &kafka,
            "ha",
            &total.to_string(),
            "1000",
        ])
        .stdout(std::fs::File::create(&acks).unwrap())
        .stderr(std::fs::File::create(dir.path().join("producer.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
        wait_lines(&acks, 1_500).await;
        let topics = client
            .refresh_metadata(Some(vec!["ha".into()]))
            .await
            .unwrap();
        let victim = topics[0].partitions[0].leader as usize - 1;
        cluster.brokers[victim].kill9();
        wait_lines(&acks, 3_000).await;
        let after_kill = lines_so_far(&acks)[1_500..3_000]
            .iter()
            .filter(|r| r["p"] == 0)
            .count();
        assert!(
            after_kill > 0,
            "nothing acknowledged on the killed leader's partition"
        );
        cluster.brokers[victim].restart_no_wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = producer.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the producer never finished"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let produced = lines_so_far(&acks);
        assert!(
            status.success(),
            "producer failed: {:?}\n{}",
            produced.last(),
            std::fs::read_to_string(dir.path().join("producer.err")).unwrap_or_default()
        );
        let acked: Vec<&serde_json::Value> =
            produced.iter().filter(|r| r.get("v").is_some()).collect();
        assert_eq!(acked.len(), total);

        let out = run(
            &mut python(&["confluent-consume", &kafka, "ha", &total.to_string()]),
            LIMIT,
        );
        let consumed = json_lines(&out);
        let mut values: Vec<&str> = consumed.iter().map(|r| r["v"].as_str().unwrap()).collect();
        values.sort();
        let before = values.len();
        values.dedup();
        assert_eq!(before, values.len(), "duplicates consumed");
        let mut expected: Vec<&str> = acked.iter().map(|r| r["v"].as_str().unwrap()).collect();
        expected.sort();
        assert_eq!(values, expected, "acknowledged records lost");
        // Per key: offsets increase with the producer's count.
        let mut by_key: std::collections::BTreeMap<&str, Vec<(u64, u64, u64)>> = Default::default();
        for r in &consumed {
            let v = r["v"].as_str().unwrap();
            let (key, n) = v.split_once(':').unwrap();
            by_key.entry(key).or_default().push((
                r["p"].as_u64().unwrap(),
                r["o"].as_u64().unwrap(),
                n.parse().unwrap(),
            ));
        }
        for (key, mut records) in by_key {
            records.sort();
            let partitions: std::collections::BTreeSet<u64> = records.iter().map(|r| r.0).collect();
            assert_eq!(partitions.len(), 1, "{key} spread over partitions");
            let ns: Vec<u64> = records.iter().map(|r| r.2).collect();
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "{key} reordered: {ns:?}"
            );
        }
    })
    .await;
}

/// With TLS on, librdkafka connects to the Kafka listener over TLS,
/// checking the broker's certificate against the cluster CA, and
/// produces and consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_use_tls_with_the_cluster_ca() {
    use tern_tls::generate;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = generate::create_ca("test CA", 1).unwrap();
    let node = generate::issue_node(&ca, 1, &["127.0.0.1".into()], 1).unwrap();
    for (name, pem) in [("ca", &ca), ("node-1", &node)] {
        std::fs::write(certs.join(format!("{name}.pem")), &pem.cert).unwrap();
        std::fs::write(certs.join(format!("{name}-key.pem")), &pem.key).unwrap();
    }
    let path = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    let (cert, key, ca_file) = (path("node-1.pem"), path("node-1-key.pem"), path("ca.pem"));
    let broker = Broker::start(
        &dir.path().join("n1"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca_file,
            "--metrics-plaintext",
        ],
    );
    let out = run(
        &mut python(&["confluent-tls", &broker.kafka_addr, &ca_file, "secured"]),
        LIMIT,
    );
    assert_eq!(json_lines(&out)[0]["read"], "over tls", "{out}");
    // Plaintext Kafka bytes on the TLS listener get no Kafka answer.
    let got = raw_exchange(&broker.kafka_addr, &kafka_frame(18, 3, &[0, 0, 0])).await;
    assert!(
        !got.starts_with(&[0, 0, 0]),
        "answered in plaintext: {got:?}"
    );
}

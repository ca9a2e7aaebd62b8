//! End-to-end specification of a single Tern broker, exercised through real
//! `ternd` processes, the `tern-client` crate and the `tern` CLI.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::RngCore;
use tern_client::{
    Admin, Client, ClientError, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset, OffsetSpec,
    Producer, ProducerConfig, ProducerRecord,
};
use tern_protocol::api::{FetchPartition, ProducePartition};
use tern_protocol::{Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};
use tern_tests::{bin, metric_sum, Broker};

/// Every test is bounded: a hang fails instead of stalling CI.
async fn bounded<F: std::future::Future<Output = T>, T>(limit: Duration, f: F) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {limit:?}"))
}

async fn topic(client: &Client, name: &str, partitions: u32) {
    Admin::new(client.clone())
        .create_topic(name, NewTopic::new(partitions))
        .await
        .expect("create topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_listed_described_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    bounded(Duration::from_secs(60), async {
        let admin = Admin::new(Client::connect(&broker.addr).await.unwrap());
        admin
            .create_topic("orders", NewTopic::new(3))
            .await
            .unwrap();
        let err = admin
            .create_topic("orders", NewTopic::new(3))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
        let err = admin
            .create_topic("bad name!", NewTopic::new(1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName));
        let err = admin
            .create_topic("zero", NewTopic::new(0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPartitions));
        let t = admin.describe_topic("orders").await.unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(
            t.config.replication_factor, 1,
            "capped by the number of brokers"
        );
        assert_eq!(t.partitions[0].replicas, vec![1]);
        let names: Vec<_> = admin
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["orders"]);
        admin.delete_topic("orders").await.unwrap();
        assert!(matches!(
            admin.describe_topic("orders").await,
            Err(ClientError::UnknownTopic(_))
        ));
        let err = admin.delete_topic("orders").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    })
    .await;
}

/// 1,000,000 records with keys over 4 partitions come back byte for byte,
/// in order per partition, each at the offset its acknowledgement named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_records_round_trip_identical() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    bounded(Duration::from_secs(300), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "million", 4).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let mut payload = vec![0u8; 4096];
        rand::rng().fill_bytes(&mut payload);
        let value_of = |i: u64| -> Bytes {
            let mut v = BytesMut::with_capacity(100);
            v.put_u64_le(i);
            let start = (i as usize * 31) % (payload.len() - 92);
            v.put_slice(&payload[start..start + 92]);
            v.freeze()
        };
        let mut acked: HashMap<(u32, u64), u64> = HashMap::with_capacity(N as usize);
        let mut pending = FuturesUnordered::new();
        for i in 0..N {
            let record =
                ProducerRecord::new("million", value_of(i)).with_key(format!("key-{}", i % 1000));
            let d = producer.enqueue(record).await.unwrap();
            pending.push(async move { (i, d.await) });
            while pending.len() > 50_000 {
                let (i, r) = pending.next().await.unwrap();
                let m = r.unwrap();
                acked.insert((m.partition, m.offset), i);
            }
        }
        producer.flush().await.unwrap();
        while let Some((i, r)) = pending.next().await {
            let m = r.unwrap();
            acked.insert((m.partition, m.offset), i);
        }
        assert_eq!(
            acked.len() as u64,
            N,
            "every record acknowledged at a distinct offset"
        );

        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer
            .assign_all("million", Offset::Earliest)
            .await
            .unwrap();
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut seen = 0u64;
        while seen < N {
            for r in consumer.poll().await.unwrap() {
                let i = acked[&(r.partition, r.offset)];
                assert_eq!(
                    r.value.as_ref().unwrap(),
                    &value_of(i),
                    "value at {}/{}",
                    r.partition,
                    r.offset
                );
                assert_eq!(
                    r.key.as_deref(),
                    Some(format!("key-{}", i % 1000).as_bytes())
                );
                if let Some(prev) = last.insert(r.partition, r.offset) {
                    assert_eq!(r.offset, prev + 1, "offsets contiguous and in order");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, N);
    })
    .await;
}

/// Acknowledged means durable: SIGKILL the broker in the middle of a produce
/// stream, restart it, and every acknowledged record is there, at its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_produce_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("n1"), &[]);
    let acked = bounded(Duration::from_secs(120), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "durable", 2).await;
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                retries: 0,
                linger: Duration::from_millis(1),
                batch_bytes_max: 16 * 1024,
                ..Default::default()
            },
        );
        let mut acked: Vec<(u32, u64, Bytes)> = Vec::new();
        let mut pending = FuturesUnordered::new();
        let mut i = 0u64;
        // Keep ~5,000 records in flight, so the kill lands mid-stream.
        while acked.len() < 20_000 {
            let value = Bytes::from(format!("record-{i}-{}", "x".repeat((i % 50) as usize)));
            let d = producer
                .enqueue(ProducerRecord::new("durable", value.clone()))
                .await
                .unwrap();
            pending.push(async move { (value, d.await) });
            i += 1;
            while pending.len() > 5_000 {
                let (value, r) = pending.next().await.unwrap();
                let m = r.expect("no failure before the kill");
                acked.push((m.partition, m.offset, value));
            }
        }
        broker.kill9();
        // Records in flight at the kill either were acknowledged or failed.
        while let Some((value, r)) = pending.next().await {
            if let Ok(m) = r {
                acked.push((m.partition, m.offset, value));
            }
        }
        acked
    })
    .await;
    assert!(acked.len() >= 20_000);
    broker.restart();
    bounded(Duration::from_secs(120), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
        consumer
            .assign_all("durable", Offset::Earliest)
            .await
            .unwrap();
        let admin = Admin::new(client);
        let mut stored: HashMap<(u32, u64), Bytes> = HashMap::new();
        let ends = [
            admin
                .list_offset("durable", 0, OffsetSpec::Latest)
                .await
                .unwrap(),
            admin
                .list_offset("durable", 1, OffsetSpec::Latest)
                .await
                .unwrap(),
        ];
        while (0..2).any(|p| consumer.position("durable", p).unwrap() < ends[p as usize]) {
            for r in consumer.poll().await.unwrap() {
                stored.insert((r.partition, r.offset), r.value.unwrap());
            }
        }
        for (p, o, v) in &acked {
            assert_eq!(
                stored.get(&(*p, *o)),
                Some(v),
                "acknowledged record {p}/{o} lost or changed"
            );
        }
    })
    .await;
}

fn raw_request(stream: &mut TcpStream, correlation_id: u32, request: Request) -> ResponseFrame {
    let mut body = BytesMut::new();
    RequestFrame {
        correlation_id,
        request,
    }
    .encode(&mut body);
    send_frame(stream, &body);
    read_frame(stream).expect("a response frame")
}

fn send_frame(stream: &mut TcpStream, body: &[u8]) {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(body).unwrap();
}

fn read_frame(stream: &mut TcpStream) -> Option<ResponseFrame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(ResponseFrame::decode(Bytes::from(body)).expect("decodable response"))
}

/// Bad input gets a clear error code (or, for garbage framing, a closed
/// connection) while a well-behaved client on another connection keeps
/// producing and consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_while_good_clients_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let client = Client::connect(&broker.addr).await.unwrap();
    topic(&client, "good", 1).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let good = tokio::spawn(async move {
        for i in 0..2_000u32 {
            producer
                .send(ProducerRecord::new("good", format!("g{i}")))
                .await
                .expect("good client keeps working");
        }
    });

    let addr = broker.addr.clone();
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        // A frame longer than the limit: the connection is closed.
        let mut s = connect();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(
            read_frame(&mut s).is_none(),
            "oversized frame must close the connection"
        );

        // A header too short to read: closed.
        let mut s = connect();
        send_frame(&mut s, &[1, 0]);
        assert!(read_frame(&mut s).is_none());

        // Unknown request type: error reply, connection stays usable.
        let mut s = connect();
        let mut body = BytesMut::new();
        body.put_u16_le(PROTOCOL_VERSION);
        body.put_u16_le(4242);
        body.put_u32_le(9);
        send_frame(&mut s, &body);
        let r = read_frame(&mut s).unwrap();
        assert_eq!(r.correlation_id, 9);
        assert_eq!(r.result.unwrap_err().code, ErrorCode::UnsupportedVersion);

        // A truncated body: InvalidRequest, same connection still works.
        let mut body = BytesMut::new();
        body.put_u16_le(PROTOCOL_VERSION);
        body.put_u16_le(1);
        body.put_u32_le(10);
        body.put_u8(1);
        send_frame(&mut s, &body);
        assert_eq!(
            read_frame(&mut s).unwrap().result.unwrap_err().code,
            ErrorCode::InvalidRequest
        );

        // A batch whose CRC is wrong, an unknown topic, a bad partition.
        let mut b = tern_protocol::BatchBuilder::with_capacity(64);
        b.push(&tern_protocol::Record {
            value: Some(Bytes::from_static(b"x")),
            ..Default::default()
        });
        let mut corrupt = BytesMut::from(&b.finish(-1, -1)[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let r = raw_request(
            &mut s,
            11,
            Request::Produce {
                acks: tern_protocol::api::Acks::All,
                timeout_ms: 1000,
                partitions: vec![
                    ProducePartition {
                        topic: "good".into(),
                        partition: 0,
                        batch: corrupt.freeze(),
                    },
                    ProducePartition {
                        topic: "nope".into(),
                        partition: 0,
                        batch: Bytes::from_static(b""),
                    },
                    ProducePartition {
                        topic: "good".into(),
                        partition: 7,
                        batch: Bytes::from_static(b""),
                    },
                ],
            },
        );
        let Response::Produce(results) = r.result.unwrap() else {
            panic!("produce response")
        };
        let codes: Vec<_> = results.iter().map(|r| r.error).collect();
        assert_eq!(
            codes,
            vec![
                ErrorCode::CorruptBatch,
                ErrorCode::UnknownTopicOrPartition,
                ErrorCode::UnknownTopicOrPartition
            ]
        );

        // Fetch past the end: OffsetOutOfRange with the log bounds.
        let r = raw_request(
            &mut s,
            12,
            Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1024,
                partitions: vec![FetchPartition {
                    topic: "good".into(),
                    partition: 0,
                    offset: 1 << 40,
                    max_bytes: 1024,
                }],
            },
        );
        let Response::Fetch(results) = r.result.unwrap() else {
            panic!("fetch response")
        };
        assert_eq!(results[0].error, ErrorCode::OffsetOutOfRange);

        // Random garbage frames never take the broker down.
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut s = connect();
            let mut junk = vec![0u8; (rng.next_u32() % 200) as usize + 8];
            rng.fill_bytes(&mut junk);
            junk[0..2].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            send_frame(&mut s, &junk);
            let _ = read_frame(&mut s);
        }
    })
    .await
    .unwrap();

    bounded(Duration::from_secs(60), good).await.unwrap();
    let (code, metrics) = broker.http("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metric_sum(&metrics, "tern_protocol_violations_total") >= 2.0);
    assert!(
        metric_sum(
            &metrics,
            "tern_request_errors_total{api=\"produce\",code=\"corrupt_batch\"}"
        ) >= 1.0
    );
    // And the broker still answers.
    let t = Admin::new(client).describe_topic("good").await.unwrap();
    assert_eq!(t.partitions[0].log_end, 2_000);
}

/// An idempotent producer's batches are stored only in sequence: a batch
/// that overtakes an earlier one (as when the earlier one failed on an old
/// leader's connection and the later one reached the new leader) is refused
/// with the retriable `OutOfOrderSequence`; once the earlier one is stored
/// the later one is taken, a retry of a stored one is answered with its
/// offset, and the log holds the batches in sequence order. Before, the
/// overtaking batch was stored and the earlier one's retry was refused as a
/// duplicate: a record lost and the order broken (seen in the Docker
/// campaign as `duplicate_sequence`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producers_batches_are_stored_only_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let client = Client::connect(&broker.addr).await.unwrap();
    topic(&client, "seq", 1).await;
    let addr = broker.addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut correlation = 0;
        let mut produce = |sequence: i32| {
            let mut b = tern_protocol::BatchBuilder::with_capacity(64);
            b.push(&tern_protocol::Record {
                value: Some(Bytes::from(format!("batch-{sequence}"))),
                ..Default::default()
            });
            correlation += 1;
            let r = raw_request(
                &mut s,
                correlation,
                Request::Produce {
                    acks: tern_protocol::api::Acks::All,
                    timeout_ms: 10_000,
                    partitions: vec![ProducePartition {
                        topic: "seq".into(),
                        partition: 0,
                        batch: b.finish(4242, sequence),
                    }],
                },
            );
            let Response::Produce(results) = r.result.unwrap() else {
                panic!("produce response")
            };
            (results[0].error, results[0].base_offset)
        };
        assert_eq!(produce(0), (ErrorCode::None, 0));
        let (code, _) = produce(2);
        assert_eq!(code, ErrorCode::OutOfOrderSequence, "sequence 2 before 1");
        assert!(code.is_retriable());
        assert_eq!(produce(1), (ErrorCode::None, 1));
        assert_eq!(produce(1), (ErrorCode::None, 1), "a retry gets its offset");
        assert_eq!(produce(2), (ErrorCode::None, 2));
        assert_eq!(produce(0).0, ErrorCode::None, "still in the window");
    })
    .await
    .unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer
        .assign("seq", &[0], Offset::Earliest)
        .await
        .unwrap();
    let mut values = Vec::new();
    bounded(Duration::from_secs(30), async {
        while values.len() < 3 {
            for r in consumer.poll().await.unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
    })
    .await;
    assert_eq!(values, ["batch-0", "batch-1", "batch-2"]);
}

/// A replica that fails to open (a transient storage error) is retried
/// with backoff until it opens, even though the catalogue does not change
/// again; before, it stayed closed until its topic's entry changed, and the
/// partition had no leader on this broker. A test hook makes the first two
/// opens fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_failed_to_open_is_retried_until_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::configure(&dir.path().join("n1"), &[]);
    broker.set_env("TERN_FAILPOINT_REPLICA_OPEN_FAILURES", "2");
    broker.spawn();
    // Registration is a catalogue change that would reopen the replica by
    // itself; wait for it so only the retry timer can reopen it.
    broker.wait_log("registered with the cluster", Duration::from_secs(60));
    let client = Client::connect(&broker.addr).await.unwrap();
    bounded(Duration::from_secs(60), async {
        topic(&client, "late", 1).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        producer
            .send(ProducerRecord::new("late", "v"))
            .await
            .expect("acknowledged once the replica opened");
    })
    .await;
    let (_, metrics) = broker.http("/metrics").unwrap();
    assert_eq!(
        metric_sum(&metrics, "tern_replica_open_failures_total"),
        2.0
    );
    assert_eq!(metric_sum(&metrics, "tern_replicas_unopened"), 0.0);
    assert!(
        broker
            .log()
            .contains("retrying replicas that failed to open"),
        "the replica opened without the retry timer; log:\n{}",
        broker.log()
    );
}

/// A fetch with nothing to read waits (long poll) and returns as soon as a
/// record arrives, not at the end of its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_fetch_long_polls_until_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    bounded(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "tail", 1).await;
        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig {
                max_wait: Duration::from_secs(20),
                ..Default::default()
            },
        );
        consumer.assign_all("tail", Offset::Latest).await.unwrap();
        let started = Instant::now();
        let producer = Producer::new(client, ProducerConfig::default());
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer
                .send(ProducerRecord::new("tail", "hello"))
                .await
                .unwrap();
        });
        let records = consumer.poll().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));
        assert!(
            waited >= Duration::from_millis(250),
            "returned before data existed: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(15),
            "did not wake on data: {waited:?}"
        );
        sender.await.unwrap();
    })
    .await;
}

/// Retention by size runs in the background, moves the log start, and shows
/// in the metrics; offsets keep growing from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_trims_old_batches_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &["--retention-check-ms", "100"]);
    bounded(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        let admin = Admin::new(client.clone());
        let mut t = NewTopic::new(1);
        t.retention_bytes = Some(20_000);
        admin.create_topic("small", t).await.unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                batch_bytes_max: 2_000,
                linger: Duration::ZERO,
                ..Default::default()
            },
        );
        for i in 0..1_000 {
            producer
                .enqueue(ProducerRecord::new("small", format!("{i:0100}")))
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
        loop {
            let start = admin
                .list_offset("small", 0, OffsetSpec::Earliest)
                .await
                .unwrap();
            if start > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, metrics) = broker.http("/metrics").unwrap();
        assert!(metric_sum(&metrics, "tern_retention_deleted_bytes_total") > 0.0);
        let size = metric_sum(&metrics, "tern_partition_size_bytes{topic=\"small\"");
        assert!(size <= 20_000.0, "partition still {size} bytes");
        let end = admin
            .list_offset("small", 0, OffsetSpec::Latest)
            .await
            .unwrap();
        assert_eq!(end, 1_000, "retention never renumbers offsets");
        // A consumer at a deleted offset is moved to the log start.
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer.assign("small", &[0], Offset::At(0)).await.unwrap();
        let first = consumer.next_record().await.unwrap();
        assert!(first.offset > 0);
    })
    .await;
}

/// The CLI: create a topic, produce keyed lines from stdin, consume them back
/// with keys, describe the topic, and see the metrics endpoint.
#[test]
fn the_cli_round_trips_lines_from_stdin_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let tern = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(bin("tern"))
            .args(["--broker", &broker.addr])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = tern(&["topic", "create", "cli", "--partitions", "1"], None);
    assert!(ok, "{err}");
    let lines: String = (0..500).map(|i| format!("k{i}:value {i}\n")).collect();
    let (ok, _, err) = tern(&["produce", "cli", "--key-separator", ":"], Some(&lines));
    assert!(ok, "{err}");
    let (ok, out, err) = tern(&["consume", "cli", "--from-beginning", "--print-key"], None);
    assert!(ok, "{err}");
    let want: String = (0..500).map(|i| format!("k{i}\tvalue {i}\n")).collect();
    assert_eq!(out, want);
    let (ok, out, _) = tern(&["consume", "cli", "--offset", "498"], None);
    assert!(ok);
    assert_eq!(out, "value 498\nvalue 499\n");
    let (ok, out, _) = tern(
        &["consume", "cli", "--from-beginning", "--count", "3"],
        None,
    );
    assert!(ok);
    assert_eq!(out.lines().count(), 3);
    let (ok, out, _) = tern(&["topic", "describe", "cli"], None);
    assert!(ok);
    assert!(
        out.contains("\t500\t500"),
        "describe shows log end and committed offsets: {out}"
    );
    let (ok, _, err) = tern(&["produce", "missing"], Some("x\n"));
    assert!(!ok, "producing to an unknown topic fails");
    assert!(err.contains("unknown topic"), "{err}");
    let (code, metrics) = broker.http("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metric_sum(&metrics, "tern_records_in_total{topic=\"cli\"}") >= 500.0);
    assert!(metrics.contains("tern_request_duration_seconds_bucket{api=\"produce\""));
}

/// SIGTERM shuts down cleanly, and everything is there after a restart.
#[test]
fn sigterm_exits_cleanly_and_restart_keeps_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("n1"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "kept", 2).await;
        let p = Producer::new(client, ProducerConfig::default());
        p.send(ProducerRecord::new("kept", "v").with_partition(1))
            .await
            .unwrap();
    });
    assert!(broker.terminate(), "ternd exits 0 on SIGTERM");
    broker.restart();
    rt.block_on(async {
        let admin = Admin::new(Client::connect(&broker.addr).await.unwrap());
        let t = admin.describe_topic("kept").await.unwrap();
        assert_eq!(t.partitions[1].log_end, 1);
    });
}

/// A tmpfs mounted for one test (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_produces_clearly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), "320m") else {
        println!("!!!!! SKIPPED: the disk-full test needs to mount a tmpfs (root) !!!!!");
        return;
    };
    let mut broker = Broker::start(&disk.0.join("n1"), &["--min-free-bytes", "64000000"]);
    bounded(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "full", 1).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let send =
            |i: u32| producer.send(ProducerRecord::new("full", format!("r{i}")).with_partition(0));
        for i in 0..100 {
            send(i).await.unwrap();
        }
        // Leave ~40 MB free: under the broker's 64 MB floor.
        let free = {
            let out = Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(&disk.0)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let filler = disk.0.join("filler");
        std::fs::write(&filler, vec![1u8; (free - 40_000_000) as usize]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match send(100).await {
                Err(e) => break e,
                Ok(_) => assert!(
                    Instant::now() < deadline,
                    "produce still accepted on a full disk"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(err.code(), Some(ErrorCode::DiskFull), "{err}");
        let m = broker.http("/metrics").unwrap().1;
        assert_eq!(metric_sum(&m, "tern_disk_full "), 1.0);
        // Space returns: produces resume without a restart.
        std::fs::remove_file(&filler).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match send(101).await {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::DiskFull), "{e}");
                    assert!(Instant::now() < deadline, "writes did not resume");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer
            .assign("full", &[0], Offset::Earliest)
            .await
            .unwrap();
        let mut values = Vec::new();
        while values.len() < 101 {
            for r in consumer.poll().await.unwrap() {
                values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        assert_eq!(
            values[..100],
            (0..100).map(|i| format!("r{i}")).collect::<Vec<_>>()[..]
        );
        assert!(values[100..].contains(&"r101".to_owned()));
    })
    .await;
    broker.kill9();
}

/// What one `tern` run did.
struct CliRun {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

impl CliRun {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout as JSON, one value per line.
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.out()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }
}

/// How long one `tern` command may take.
const CLI_RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs `tern args` with `stdin` and extra environment, in a clean
/// environment as far as `tern` is concerned (no inherited `TERN_BROKER`,
/// `TERN_PROFILE`; `TERN_CONFIG` points into `config_dir`). Bounded by
/// [`CLI_RUN_LIMIT`]; the process is killed past it.
fn tern_run(
    config_dir: &std::path::Path,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> CliRun {
    let mut command = Command::new(bin("tern"));
    command
        .args(args)
        .env_remove("TERN_BROKER")
        .env_remove("TERN_PROFILE")
        .env_remove("RUST_BACKTRACE")
        .env("TERN_CONFIG", config_dir.join("config.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn tern");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Pipes are drained by threads so a full pipe cannot stall the child.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let deadline = Instant::now() + CLI_RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern {args:?} still running after {CLI_RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    CliRun {
        ok: status.success(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// `--output json` parses on every listing command, `--format` renders
/// kcat's tokens, and consume starts at the last N records or at a time.
#[test]
fn the_cli_speaks_json_kcat_formats_and_starts_at_last_n_or_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let cfg = dir.path();
    let tern = |args: &[&str]| {
        let mut all = vec!["--broker", broker.addr.as_str()];
        all.extend_from_slice(args);
        tern_run(cfg, &all, b"", &[])
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two partitions of ten records; record i of partition p has key k<i>,
    // value v<p>-<i>, timestamp 1_000_000 + i s and a header n=<i>. Each
    // is sent alone, so each is its own batch.
    let _lock = rt.block_on(bounded(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        topic(&client, "kc", 2).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        for p in 0..2u32 {
            for i in 0..10i64 {
                let mut r = ProducerRecord::new("kc", format!("v{p}-{i}"))
                    .with_key(format!("k{i}"))
                    .with_partition(p)
                    .with_header("n", i.to_string());
                r.timestamp_ms = Some(1_000_000 + i * 1000);
                producer.send(r).await.unwrap();
            }
        }
        tern_client::LockClient::new(client)
            .acquire("nightly", Duration::from_secs(60), None)
            .await
            .unwrap()
    }));

    let run = tern(&["topic", "list", "--output", "json"]);
    assert!(run.ok, "{}", run.stderr);
    let topics = run.json_lines();
    assert!(
        topics
            .iter()
            .any(|t| t["name"] == "kc" && t["partitions"] == 2),
        "{topics:?}"
    );
    let run = tern(&["topic", "describe", "kc", "-o", "json"]);
    let t = &run.json_lines()[0];
    assert_eq!(t["partitions"][1]["log_end"], 10, "{t}");
    let run = tern(&["cluster", "brokers", "--output", "json"]);
    let brokers = run.json_lines();
    assert_eq!(brokers.len(), 1, "{brokers:?}");
    assert_eq!(brokers[0]["address"], broker.addr.as_str());
    assert_eq!(brokers[0]["metadata_leader"], true);
    let run = tern(&["lock", "list", "--output", "json"]);
    let locks = run.json_lines();
    assert_eq!(locks[0]["lock"], "nightly", "{locks:?}");
    assert_eq!(locks[0]["role"], "holder");
    assert!(locks[0]["token"].as_u64().unwrap() > 0);

    let run = tern(&["consume", "kc", "--from-beginning", "--output", "json"]);
    assert!(run.ok, "{}", run.stderr);
    let records = run.json_lines();
    assert_eq!(records.len(), 20);
    let r = records
        .iter()
        .find(|r| r["partition"] == 1 && r["offset"] == 4)
        .expect("record 1/4");
    assert_eq!(r["topic"], "kc");
    assert_eq!(r["key"], "k4");
    assert_eq!(r["value"], "v1-4");
    assert_eq!(r["timestamp_ms"], 1_004_000);
    assert_eq!(r["headers"][0]["name"], "n");
    assert_eq!(r["headers"][0]["value"], "4");

    // The last 3 of partition 1, every token of --format.
    let run = tern(&[
        "consume",
        "kc",
        "--partition",
        "1",
        "--offset",
        "-3",
        "--exit",
        "--format",
        "%t %p %o %T %k %s %h %K %S\\n",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.out(),
        "kc 1 7 1007000 k7 v1-7 n=7 2 4\nkc 1 8 1008000 k8 v1-8 n=8 2 4\nkc 1 9 1009000 k9 v1-9 n=9 2 4\n"
    );
    // -N larger than the partition: all of it.
    let run = tern(&["consume", "kc", "--offset", "-50", "--format", "%p:%o\\n"]);
    assert_eq!(run.out().lines().count(), 20);

    // From 1_005_000 ms (RFC 3339 and ms): offsets 5..9 of each partition.
    for from in [
        "1970-01-01T00:16:45Z",
        "1970-01-01T01:16:45+01:00",
        "1005000",
    ] {
        let run = tern(&[
            "consume",
            "kc",
            "--from-timestamp",
            from,
            "--format",
            "%p:%o\\n",
        ]);
        assert!(run.ok, "{}", run.stderr);
        let mut got: Vec<String> = run.out().lines().map(str::to_owned).collect();
        got.sort();
        let want: Vec<String> = (0..2)
            .flat_map(|p| (5..10).map(move |o| format!("{p}:{o}")))
            .collect();
        assert_eq!(got, want, "--from-timestamp {from}");
    }
    // Between two records' times: from the next one.
    let run = tern(&[
        "consume",
        "kc",
        "--partition",
        "0",
        "--from-timestamp",
        "1007500",
        "--format",
        "%o,",
    ]);
    assert_eq!(run.out(), "8,9,");

    let run = tern(&["consume", "kc", "--partition", "7"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("no partition 7"), "{}", run.stderr);
    let run = tern(&["consume", "kc", "--format", "%q"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("unknown token %q"), "{}", run.stderr);

    // A group with committed offsets: listed, described with lag, and a
    // dry run of a reset shows the change and makes none.
    let run = tern(&[
        "group",
        "reset-offsets",
        "billing",
        "--topic",
        "kc",
        "--to-offset",
        "2",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let run = tern(&["group", "list", "--output", "json"]);
    assert!(run.json_lines().iter().any(|g| g["group"] == "billing"));
    let lag = |tern_out: &CliRun| -> Vec<(u64, u64, u64)> {
        let g = &tern_out.json_lines()[0];
        g["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let n = |k: &str| o[k].as_u64().unwrap();
                (n("committed"), n("end"), n("lag"))
            })
            .collect()
    };
    let before = tern(&["group", "describe", "billing", "--output", "json"]);
    assert_eq!(lag(&before), vec![(2, 10, 8), (2, 10, 8)]);
    let run = tern(&[
        "group",
        "reset-offsets",
        "billing",
        "--topic",
        "kc",
        "--to-latest",
        "--dry-run",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.out(),
        "topic\tpartition\tcommitted\tnew\nkc\t0\t2\t10\nkc\t1\t2\t10\n"
    );
    assert!(
        run.stderr.contains("dry run: nothing changed"),
        "{}",
        run.stderr
    );
    let after = tern(&["group", "describe", "billing", "--output", "json"]);
    assert_eq!(
        lag(&after),
        vec![(2, 10, 8), (2, 10, 8)],
        "the dry run changed nothing"
    );
}

/// Produce: headers, NUL- and custom-delimited input, and a binary file
/// as one value, each read back byte for byte.
#[test]
fn the_cli_produces_headers_delimited_input_and_binary_files() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let cfg = dir.path();
    let tern = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--broker", broker.addr.as_str()];
        all.extend_from_slice(args);
        tern_run(cfg, &all, stdin, &[])
    };
    for t in ["hdr", "nul", "semi", "bin"] {
        let run = tern(&["topic", "create", t, "--partitions", "1"], b"");
        assert!(run.ok, "{}", run.stderr);
    }

    let run = tern(
        &[
            "produce",
            "hdr",
            "--header",
            "trace=abc",
            "-H",
            "eq=x=y",
            "--key-separator",
            ":",
        ],
        b"k1:r1\nk2:r2\n",
    );
    assert!(run.ok, "{}", run.stderr);
    let run = tern(
        &[
            "consume",
            "hdr",
            "--from-beginning",
            "--format",
            "%k|%s|%h\\n",
        ],
        b"",
    );
    assert_eq!(
        run.out(),
        "k1|r1|trace=abc,eq=x=y\nk2|r2|trace=abc,eq=x=y\n"
    );

    // A newline inside a NUL-delimited record is data; no final NUL needed.
    let run = tern(
        &["produce", "nul", "--null-delimited"],
        b"one\0two\nlines\0\0three",
    );
    assert!(run.ok, "{}", run.stderr);
    let run = tern(&["consume", "nul", "--from-beginning", "-o", "json"], b"");
    let values: Vec<String> = run
        .json_lines()
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, ["one", "two\nlines", "", "three"]);

    let run = tern(&["produce", "semi", "--delimiter", ";;"], b"a;;b;c;;");
    assert!(run.ok, "{}", run.stderr);
    let run = tern(
        &["consume", "semi", "--from-beginning", "--format", "[%s]"],
        b"",
    );
    assert_eq!(run.out(), "[a][b;c]");

    // Every byte value, 300 KB: comes back identical through --format '%s'.
    let mut blob = vec![0u8; 300_000];
    rand::rng().fill_bytes(&mut blob);
    blob[..256].copy_from_slice(&(0..=255u8).collect::<Vec<_>>());
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let run = tern(
        &[
            "produce",
            "bin",
            "--value-file",
            file.to_str().unwrap(),
            "--key",
            "blob",
        ],
        b"ignored stdin",
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("1 records acknowledged"),
        "{}",
        run.stderr
    );
    let run = tern(
        &["consume", "bin", "--from-beginning", "--format", "%s"],
        b"",
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout == blob,
        "binary value differs ({} bytes back)",
        run.stdout.len()
    );
    let run = tern(&["consume", "bin", "--from-beginning", "-o", "json"], b"");
    let r = &run.json_lines()[0];
    assert_eq!(r["key"], "blob");
    assert!(r["value"].is_null() || r.get("value").is_none());
    assert_eq!(r["value_base64"].as_str().unwrap().len(), 400_000);
}

/// Completions for each shell, saved profiles with the documented
/// precedence, and a failure that is one line and a non-zero status even
/// with RUST_BACKTRACE set.
#[test]
fn the_cli_completes_uses_profiles_and_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    for shell in ["bash", "zsh", "fish"] {
        let run = tern_run(cfg, &["completions", shell], b"", &[]);
        assert!(run.ok, "{shell}: {}", run.stderr);
        let script = run.out();
        assert!(
            script.contains("consume") && script.contains("from-timestamp"),
            "{shell}: {script}"
        );
    }

    // Nothing listens on port 1: refused at once.
    let dead = "127.0.0.1:1";
    let run = tern_run(
        cfg,
        &["--broker", dead, "--connect-timeout", "1s", "topic", "list"],
        b"",
        &[("RUST_BACKTRACE", "1")],
    );
    assert!(!run.ok);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", run.stderr);
    assert!(
        lines[0].starts_with("Error: ") && lines[0].contains(dead),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("backtrace"), "{}", run.stderr);

    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let run = tern_run(
        cfg,
        &["profile", "add", "local", "--brokers", &broker.addr],
        b"",
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    let run = tern_run(
        cfg,
        &["profile", "add", "dead", "--brokers", dead],
        b"",
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    let run = tern_run(cfg, &["profile", "list"], b"", &[]);
    assert!(
        run.out().contains(&format!("local\t{}", broker.addr)),
        "{}",
        run.out()
    );

    let create = |extra: &[&str], env: &[(&str, &str)], name: &str| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["topic", "create", name]);
        tern_run(cfg, &args, b"", env)
    };
    assert!(create(&["--profile", "local"], &[], "p1").ok);
    assert!(create(&[], &[("TERN_PROFILE", "local")], "p2").ok);
    // --broker and TERN_BROKER win over a profile.
    assert!(create(&["--profile", "dead", "--broker", &broker.addr], &[], "p3").ok);
    assert!(
        create(
            &[],
            &[("TERN_PROFILE", "dead"), ("TERN_BROKER", &broker.addr)],
            "p4"
        )
        .ok
    );
    assert!(!create(&["--profile", "dead"], &[], "p5").ok);
    let run = create(&["--profile", "nope"], &[], "p6");
    assert!(!run.ok);
    assert!(
        run.stderr.contains("no profile named \"nope\""),
        "{}",
        run.stderr
    );
    // The default profile is used when nothing else names brokers.
    let run = tern_run(
        cfg,
        &[
            "profile",
            "add",
            "local",
            "--brokers",
            &broker.addr,
            "--default",
        ],
        b"",
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    let run = tern_run(cfg, &["topic", "list"], b"", &[]);
    assert!(run.ok, "{}", run.stderr);
    let mut names: Vec<String> = run
        .out()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["p1", "p2", "p3", "p4"]);
    let run = tern_run(cfg, &["profile", "remove", "local"], b"", &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(!tern_run(cfg, &["--profile", "local", "topic", "list"], b"", &[]).ok);
}

/// `tern topic add-partitions T --count N` grows a topic to N partitions in
/// all (its help says N is the new total, with an example); a count not
/// larger than the current one, and an unknown topic, fail in one line
/// that names the reason.
#[test]
fn the_cli_grows_a_topic_to_a_new_total_and_refuses_to_shrink_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let cfg = dir.path();
    let tern = |args: &[&str]| {
        let mut all = vec!["--broker", broker.addr.as_str()];
        all.extend_from_slice(args);
        tern_run(cfg, &all, b"", &[])
    };
    let help = tern(&["topic", "add-partitions", "--help"]);
    assert!(help.ok, "{}", help.stderr);
    assert!(
        help.out().contains("TOTAL")
            && help
                .out()
                .contains("tern topic add-partitions orders --count 12"),
        "{}",
        help.out()
    );
    let run = tern(&["topic", "create", "grow", "--partitions", "2"]);
    assert!(run.ok, "{}", run.stderr);
    let run = tern(&["topic", "add-partitions", "grow", "--count", "5"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.out().trim(), "topic grow now has 5 partitions");
    let run = tern(&["topic", "describe", "grow", "--output", "json"]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.json_lines()[0]["partitions"].as_array().unwrap().len(),
        5
    );
    // Records go to a new partition at once.
    let run = tern_run(
        cfg,
        &[
            "--broker",
            broker.addr.as_str(),
            "produce",
            "grow",
            "--partition",
            "4",
        ],
        b"on-a-new-partition\n",
        &[],
    );
    assert!(run.ok, "{}", run.stderr);

    for (count, says) in [("5", "must be larger"), ("3", "has 5 partitions")] {
        let run = tern(&["topic", "add-partitions", "grow", "--count", count]);
        assert!(!run.ok);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.starts_with("Error: ")
                && run.stderr.contains("invalid_partitions")
                && run.stderr.contains(says),
            "{}",
            run.stderr
        );
    }
    let run = tern(&["topic", "add-partitions", "nowhere", "--count", "3"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("no topic"), "{}", run.stderr);
}

/// `tern bench produce --rate`: an open loop of single-record round trips
/// for about 2 s reports, as one JSON object, ordered latency quantiles
/// measured from the schedule and the rate it was asked for. (Before the
/// open-loop mode, `--rate` and `--duration` did not exist.)
#[test]
fn the_cli_benchmarks_an_open_loop_at_a_fixed_rate() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let run = tern_run(
        dir.path(),
        &[
            "--broker",
            broker.addr.as_str(),
            "bench",
            "produce",
            "--topic",
            "openloop",
            "--rate",
            "200",
            "--batch",
            "1",
            "--duration",
            "2",
            "--output",
            "json",
        ],
        b"",
        &[],
    );
    assert!(run.ok, "tern failed: {}", run.stderr);
    let text = String::from_utf8(run.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("field {k} missing in {v}"))
    };
    assert_eq!(v["mode"], "open-loop");
    assert_eq!(f("rate_requested"), 200.0);
    assert_eq!(f("records"), 400.0, "200/s for 2 s");
    assert_eq!(f("size"), 100.0);
    assert!(v["valid"].is_boolean(), "{v}");
    let (p50, p90, p99, p999, max) = (
        f("p50_ms"),
        f("p90_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms"),
    );
    assert!(p50 > 0.0, "a round trip takes time: {v}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{v}"
    );
    assert!(f("behind_p99_ms") <= f("behind_max_ms"), "{v}");
    // An open loop never sends ahead of its schedule: the achieved rate
    // cannot exceed the requested one (a slow machine may make it lower,
    // which is not this test's business).
    let achieved = f("rate_achieved");
    assert!(
        achieved > 0.0 && achieved <= 201.0,
        "achieved {achieved}/s for 200/s requested: {v}"
    );
    // The open loop kept to its schedule: 400 records at 200/s take 2 s
    // at least, whatever the latency.
    assert!(f("elapsed_s") >= 1.99, "{v}");
    // The text form names the mode and the quantiles.
    let run = tern_run(
        dir.path(),
        &[
            "--broker",
            broker.addr.as_str(),
            "bench",
            "produce",
            "--topic",
            "openloop",
            "--rate",
            "100",
            "--messages",
            "20",
        ],
        b"",
        &[],
    );
    assert!(run.ok, "tern failed: {}", run.stderr);
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(
        text.contains("open loop") && text.contains("p999"),
        "{text}"
    );
    assert!(text.contains("20 msgs"), "{text}");
    // The open loop is for produce: consume refuses it rather than
    // ignoring it.
    let run = tern_run(
        dir.path(),
        &[
            "--broker",
            broker.addr.as_str(),
            "bench",
            "consume",
            "--topic",
            "openloop",
            "--rate",
            "100",
        ],
        b"",
        &[],
    );
    assert!(
        !run.ok && run.stderr.contains("produce only"),
        "{}",
        run.stderr
    );
}

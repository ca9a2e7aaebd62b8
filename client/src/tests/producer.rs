//! The producer against a real broker: cancel safety of `enqueue`, and
//! retries that keep order and store each batch once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;

use super::{bounded, eventually, Proxy, TestBroker};
use crate::{
    Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    IN_FLIGHT_PER_PARTITION_MAX,
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn in_flight_limit_fits_the_brokers_de_duplication_window() {
    // A retried batch must still be in the window, or it is stored twice.
    assert_eq!(
        IN_FLIGHT_PER_PARTITION_MAX,
        tern_raft::partition_sm::PRODUCER_WINDOW
    );
}

/// `enqueue` cancelled during its first metadata fetch must give its queue
/// slot back: with one slot, a lost slot blocks every later record forever.
/// A current-thread runtime makes the cancellation point exact: nothing
/// else runs during the single poll, so the fetch cannot have completed.
#[tokio::test(flavor = "current_thread")]
async fn enqueue_cancelled_during_its_metadata_fetch_frees_its_queue_slot() {
    let broker = TestBroker::start(None).await;
    // Connected before the topic exists: the topic is not in its cache,
    // so the first enqueue must fetch metadata.
    let client = broker.client().await;
    broker.create_topic("cancelled", 1).await;
    let producer = Producer::new(
        client,
        ProducerConfig {
            queue_records_max: 1,
            ..Default::default()
        },
    );
    let first = producer.enqueue(ProducerRecord::new("cancelled", "dropped"));
    assert!(
        first.now_or_never().is_none(),
        "the first enqueue should be waiting for metadata"
    );
    // The first future is dropped: cancelled mid-fetch.
    let meta = bounded(
        LIMIT,
        "send after a cancelled enqueue (a lost slot blocks it forever)",
        producer.send(ProducerRecord::new("cancelled", "kept")),
    )
    .await
    .expect("send");
    assert_eq!(meta.offset, 0, "the cancelled record must not be stored");
    // And the slot comes back after each acknowledgement.
    let meta = bounded(
        LIMIT,
        "second send",
        producer.send(ProducerRecord::new("cancelled", "again")),
    )
    .await
    .expect("send");
    assert_eq!(meta.offset, 1);
    broker.stop().await;
}

/// Batches whose acknowledgements are lost (the broker stored them, then
/// the connection died) are retried; the broker recognises the retries, so
/// every record is stored exactly once and in order per partition, and
/// each delivery reports the offset the record really has.
#[tokio::test(flavor = "current_thread")]
async fn retried_batches_keep_order_and_are_stored_once() {
    const PARTITIONS: u32 = 3;
    const ROUND: u32 = 120;
    let (mut proxy, listener) = Proxy::bind().await;
    let broker = TestBroker::start(Some(proxy.addr)).await;
    proxy.forward_to(listener, broker.addr);
    broker.create_topic("retried", PARTITIONS).await;
    // Every connection of this client goes through the proxy: the seed
    // and the advertised leader address are both the proxy.
    let client = crate::Client::connect(&proxy.addr.to_string())
        .await
        .expect("connect through the proxy");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(100),
            retries: 50,
            ..Default::default()
        },
    );
    let key = |i: u32| format!("key-{}", i % 17);
    let value = |i: u32| format!("value-{i}");
    let mut sent: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();

    // Round 1 goes through normally; round 2's acknowledgements are lost.
    for round in 0..2 {
        let lose_acks = round == 1;
        proxy.drop_replies(lose_acks);
        let mut deliveries = Vec::new();
        for i in round * ROUND..(round + 1) * ROUND {
            let record = ProducerRecord::new("retried", value(i)).with_key(key(i));
            let d = producer.enqueue(record).await.expect("enqueue");
            deliveries.push((value(i), d));
        }
        if lose_acks {
            // Wait until the broker stored everything, then cut the
            // connections: every in-flight batch fails and is retried.
            let total = u64::from(2 * ROUND);
            let b = &broker;
            eventually(LIMIT, "broker stored round 2", || async move {
                let mut end = 0;
                for p in 0..PARTITIONS {
                    end += b.log_end("retried", p).await;
                }
                end == total
            })
            .await;
            proxy.drop_replies(false);
            proxy.cut();
        }
        for (v, d) in deliveries {
            let meta = bounded(LIMIT, "delivery", d).await.expect("delivered");
            sent.entry(meta.partition)
                .or_default()
                .push((v, meta.offset));
        }
    }

    let mut stored_total = 0;
    for p in 0..PARTITIONS {
        let end = broker.log_end("retried", p).await;
        let records = sent.get(&p).cloned().unwrap_or_default();
        assert_eq!(
            end,
            records.len() as u64,
            "partition {p}: {} records sent, {end} stored (duplicates?)",
            records.len()
        );
        // Deliveries in enqueue order carry consecutive offsets.
        for (i, (_, offset)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64, "partition {p} out of order");
        }
        stored_total += end;
    }
    assert_eq!(stored_total, u64::from(2 * ROUND));

    // What a consumer reads matches what each delivery said.
    let mut consumer = Consumer::new(
        broker.client().await,
        ConsumerConfig {
            max_wait: Duration::from_millis(100),
            ..Default::default()
        },
    );
    consumer
        .assign_all("retried", Offset::Earliest)
        .await
        .expect("assign");
    let mut read: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
    bounded(LIMIT, "read everything back", async {
        let mut n = 0;
        while n < 2 * ROUND {
            let r = consumer.next_record().await.expect("record");
            let v = String::from_utf8(r.value.expect("value").to_vec()).expect("utf-8");
            read.entry(r.partition).or_default().push((v, r.offset));
            n += 1;
        }
    })
    .await;
    assert_eq!(read, sent, "the log differs from the deliveries");
    broker.stop().await;
}

/// A topic grown while a producer writes to it: a record for a partition
/// the producer's cached count does not have yet makes it ask the cluster
/// (instead of refusing the record), and within `metadata_max_age` keyed
/// records are routed over the new count — each key either stays or moves
/// to a new partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_follows_a_topic_that_grew() {
    use tern_protocol::partitioner::partition_for_key;
    let broker = TestBroker::start(None).await;
    broker.create_topic("grows", 2).await;
    let client = broker.client().await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            metadata_max_age: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let key = |i: u32| format!("key-{i}");
    for i in 0..20 {
        let m = producer
            .send(ProducerRecord::new("grows", "before").with_key(key(i)))
            .await
            .expect("send before the growth");
        assert_eq!(m.partition, partition_for_key(key(i).as_bytes(), 2));
    }
    bounded(
        LIMIT,
        "grow the topic",
        crate::Admin::new(client.clone()).create_partitions("grows", 5),
    )
    .await
    .expect("grow");
    // Explicit partition 4: unknown to the producer's cache, known to the
    // cluster.
    let m = bounded(
        LIMIT,
        "send to a new partition",
        producer.send(ProducerRecord::new("grows", "explicit").with_partition(4)),
    )
    .await
    .expect("a new partition takes records at once");
    assert_eq!((m.partition, m.offset), (4, 0));
    // Keyed records follow once the count is refreshed.
    eventually(LIMIT, "keys routed over 5 partitions", || {
        let producer = producer.clone();
        async move {
            let mut all_new = true;
            for i in 0..20 {
                let m = producer
                    .send(ProducerRecord::new("grows", "after").with_key(key(i)))
                    .await
                    .expect("send after the growth");
                let (old, new) = (
                    partition_for_key(key(i).as_bytes(), 2),
                    partition_for_key(key(i).as_bytes(), 5),
                );
                assert!(m.partition == old || m.partition == new);
                all_new &= m.partition == new;
            }
            all_new
        }
    })
    .await;
    broker.stop().await;
}

/// Keyless records rotate over every partition, batch by batch, for good
/// (a sticky index that ran past the last partition once stayed on
/// partition 0 for ever after: every multi-partition benchmark wrote one
/// partition).
#[tokio::test(flavor = "current_thread")]
async fn keyless_records_keep_rotating_over_every_partition() {
    const PARTITIONS: u32 = 4;
    let broker = TestBroker::start(None).await;
    broker.create_topic("spread", PARTITIONS).await;
    let client = crate::Client::connect(&broker.addr.to_string())
        .await
        .expect("connect");
    let producer = Producer::new(
        client,
        ProducerConfig {
            // About ten records per batch: many batches, many rotations.
            batch_bytes_max: 10 * 40,
            ..Default::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..2_000u32 {
        let record = ProducerRecord::new("spread", format!("value-{i:06}"));
        deliveries.push(producer.enqueue(record).await.expect("enqueue"));
    }
    producer.flush().await.expect("flush");
    let mut per_partition = [0u32; PARTITIONS as usize];
    for d in deliveries {
        let meta = bounded(LIMIT, "delivery", d).await.expect("delivered");
        per_partition[meta.partition as usize] += 1;
    }
    for (p, n) in per_partition.iter().enumerate() {
        assert!(
            *n >= 2_000 / PARTITIONS / 2,
            "partition {p} got {n} of 2,000: {per_partition:?}"
        );
    }
}

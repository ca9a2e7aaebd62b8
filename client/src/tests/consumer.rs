//! The consumer against a real broker: positions through a borrowed stream
//! and seeks, per-offset commits, a dropped member leaving its group, and
//! rebalance callbacks.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use super::{bounded, TestBroker};
use crate::{
    Admin, Client, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    RebalanceListener,
};

const LIMIT: Duration = Duration::from_secs(60);
/// Long enough that a member whose session had to run out would make
/// the tests that rely on a prompt leave fail their bounds.
const SESSION: Duration = Duration::from_secs(60);

fn config() -> ConsumerConfig {
    ConsumerConfig {
        max_wait: Duration::from_millis(100),
        session_timeout: SESSION,
        auto_commit_interval: None,
        ..Default::default()
    }
}

/// Produces `n` records to partition 0 with values "0", "1", ... and
/// timestamps 1000, 1010, ...
async fn produce(client: &Client, topic: &str, n: u64) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..n {
        let mut r = ProducerRecord::new(topic, i.to_string()).with_partition(0);
        r.timestamp_ms = Some(1000 + 10 * i as i64);
        deliveries.push(producer.enqueue(r).await.expect("enqueue"));
    }
    for d in deliveries {
        d.await.expect("delivered");
    }
}

fn offsets(records: &[crate::ConsumerRecord]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

#[tokio::test]
async fn positions_follow_handed_out_records_seeks_and_a_borrowed_stream() {
    let broker = TestBroker::start(None).await;
    broker.create_topic("positions", 1).await;
    let client = broker.client().await;
    produce(&client, "positions", 20).await;
    let mut consumer = Consumer::new(client, config());
    consumer
        .assign("positions", &[0], Offset::Earliest)
        .await
        .expect("assign");
    assert_eq!(consumer.position("positions", 0), Some(0));
    assert_eq!(consumer.position("positions", 1), None, "not assigned");

    // A stream borrowed for five records; the consumer is usable after it.
    let first: Vec<_> = bounded(
        LIMIT,
        "five records",
        consumer.stream().take(5).collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .expect("records");
    assert_eq!(offsets(&first), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        consumer.position("positions", 0),
        Some(5),
        "position = next record to hand out, not the fetch position"
    );
    // A second stream goes on where the first stopped.
    let next = bounded(LIMIT, "next", consumer.stream().next())
        .await
        .expect("a stream never ends")
        .expect("record");
    assert_eq!(next.offset, 5);

    consumer
        .seek("positions", 0, Offset::At(12))
        .await
        .expect("seek");
    assert_eq!(consumer.position("positions", 0), Some(12));
    let r = bounded(LIMIT, "record", consumer.next_record())
        .await
        .expect("record");
    assert_eq!((r.offset, r.value.as_deref()), (12, Some(&b"12"[..])));

    consumer
        .seek("positions", 0, Offset::Timestamp(1075))
        .await
        .expect("seek by time");
    let r = bounded(LIMIT, "record", consumer.next_record())
        .await
        .expect("record");
    assert_eq!(
        r.offset, 8,
        "the first record at or after 1075 ms is offset 8 (1080 ms), though all share a batch"
    );
    assert_eq!(consumer.position("positions", 0), Some(9));

    consumer
        .seek("positions", 0, Offset::Earliest)
        .await
        .expect("seek");
    let r = bounded(LIMIT, "record", consumer.next_record())
        .await
        .expect("record");
    assert_eq!(r.offset, 0);

    consumer
        .seek("positions", 0, Offset::Latest)
        .await
        .expect("seek");
    assert_eq!(consumer.position("positions", 0), Some(20));
    let none = bounded(LIMIT, "poll at the end", consumer.poll())
        .await
        .expect("poll");
    assert!(none.is_empty(), "nothing after the end: {none:?}");
    broker.stop().await;
}

/// `commit_offsets` records exactly the given positions; dropping a member
/// without `close` leaves the group at once, so the next member gets the
/// partition well within its predecessor's (long) session and resumes
/// from the last commit.
#[tokio::test]
async fn per_offset_commits_and_a_dropped_member_leaves_its_group() {
    let broker = TestBroker::start(None).await;
    broker.create_topic("commits", 1).await;
    let client = broker.client().await;
    produce(&client, "commits", 10).await;
    let admin = Admin::new(client.clone());
    let committed = |info: crate::GroupInfo| {
        info.offsets
            .iter()
            .find(|o| o.topic == "commits" && o.partition == 0)
            .map(|o| o.committed)
    };

    let mut first = Consumer::new(client.clone(), config());
    bounded(
        LIMIT,
        "subscribe",
        first.subscribe("auditors", &["commits"]),
    )
    .await
    .expect("subscribe");
    let records: Vec<_> = bounded(
        LIMIT,
        "ten records",
        first.stream().take(10).collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .expect("records");
    assert_eq!(offsets(&records), (0..10).collect::<Vec<_>>());

    // Only the first four were processed: commit exactly that.
    first
        .commit_offsets(&[("commits", 0, 4)])
        .await
        .expect("commit offsets");
    let info = admin.describe_group("auditors").await.expect("describe");
    assert_eq!(committed(info), Some(4));

    // A partition it does not own is refused.
    let refused = first.commit_offsets(&[("commits", 7, 1)]).await;
    assert!(refused.is_err(), "commit of a foreign partition accepted");

    // Dropped without close (auto-commit off: nothing more is committed).
    drop(first);
    let mut second = Consumer::new(client.clone(), config());
    bounded(
        LIMIT,
        "subscribe",
        second.subscribe("auditors", &["commits"]),
    )
    .await
    .expect("subscribe");
    // Well under SESSION: only a leave sent on drop gets it here in time.
    let r = bounded(
        Duration::from_secs(20),
        "the next member reads (the dropped one did not leave?)",
        second.next_record(),
    )
    .await
    .expect("record");
    assert_eq!(r.offset, 4, "resumes from the explicit commit");
    second.close().await.expect("close");
    let info = admin.describe_group("auditors").await.expect("describe");
    assert_eq!(
        committed(info),
        Some(5),
        "close commits what was handed out"
    );
    assert!(
        admin
            .describe_group("auditors")
            .await
            .expect("describe")
            .members
            .is_empty(),
        "close left the group"
    );

    // With auto-commit on, a dropped member commits what it handed out
    // (as close would) before it leaves, long before its next tick.
    let mut third = Consumer::new(
        client.clone(),
        ConsumerConfig {
            auto_commit_interval: Some(Duration::from_secs(3600)),
            ..config()
        },
    );
    bounded(
        LIMIT,
        "subscribe",
        third.subscribe("auditors", &["commits"]),
    )
    .await
    .expect("subscribe");
    for expected in [5, 6] {
        let r = bounded(LIMIT, "record", third.next_record())
            .await
            .expect("record");
        assert_eq!(r.offset, expected);
    }
    drop(third);
    let admin_ref = &admin;
    super::eventually(
        LIMIT,
        "the dropped member committed and left",
        || async move {
            let info = admin_ref
                .describe_group("auditors")
                .await
                .expect("describe");
            info.members.is_empty() && committed(info) == Some(7)
        },
    )
    .await;
    broker.stop().await;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Revoked(BTreeSet<(String, u32)>),
    Assigned(BTreeSet<(String, u32)>),
}

/// Records what the consumer reports, with the assignment it reported.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("events lock").clone()
    }
}

impl RebalanceListener for Recorder {
    fn on_revoked(&mut self, partitions: &[(String, u32)]) {
        let set = partitions.iter().cloned().collect();
        self.0
            .lock()
            .expect("events lock")
            .push(Event::Revoked(set));
    }
    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        let set = partitions.iter().cloned().collect();
        self.0
            .lock()
            .expect("events lock")
            .push(Event::Assigned(set));
    }
}

fn set(c: &Consumer) -> BTreeSet<(String, u32)> {
    c.assignment().into_iter().collect()
}

/// Polls `consumers` (each once per round) until `done` holds.
async fn poll_until(
    consumers: &mut [&mut Consumer],
    what: &str,
    done: impl Fn(&[&mut Consumer]) -> bool,
) {
    bounded(LIMIT, what, async {
        while !done(consumers) {
            for c in consumers.iter_mut() {
                c.poll().await.expect("poll");
            }
        }
    })
    .await
}

#[tokio::test]
async fn rebalance_callbacks_report_revoked_then_assigned_partitions() {
    let broker = TestBroker::start(None).await;
    broker.create_topic("shared", 4).await;
    let client = broker.client().await;
    let all: BTreeSet<(String, u32)> = (0..4).map(|p| ("shared".to_owned(), p)).collect();

    let a_events = Recorder::default();
    let mut a = Consumer::new(client.clone(), config());
    a.set_rebalance_listener(a_events.clone());
    bounded(LIMIT, "subscribe a", a.subscribe("sharers", &["shared"]))
        .await
        .expect("subscribe");
    assert_eq!(set(&a), all, "a lone member owns every partition");
    assert_eq!(a_events.events(), vec![Event::Assigned(all.clone())]);

    let b_events = Recorder::default();
    let mut b = Consumer::new(client.clone(), config());
    b.set_rebalance_listener(b_events.clone());
    bounded(LIMIT, "subscribe b", b.subscribe("sharers", &["shared"]))
        .await
        .expect("subscribe");
    poll_until(
        &mut [&mut a, &mut b],
        "a and b share the partitions",
        |cs| {
            let (a, b) = (set(cs[0]), set(cs[1]));
            !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && &a | &b == all
        },
    )
    .await;
    let (a_now, b_now) = (set(&a), set(&b));
    let moved: BTreeSet<_> = all.difference(&a_now).cloned().collect();
    assert_eq!(moved, b_now);
    assert_eq!(
        a_events.events(),
        vec![Event::Assigned(all.clone()), Event::Revoked(moved.clone())],
        "a: revoked only what moved, nothing newly assigned"
    );
    // b saw its partitions assigned (possibly after an empty first view).
    let b_assigned: BTreeSet<_> = b_events
        .events()
        .into_iter()
        .flat_map(|e| match e {
            Event::Assigned(s) => s,
            Event::Revoked(s) => panic!("b lost {s:?} it never had"),
        })
        .collect();
    assert_eq!(b_assigned, b_now);

    // b goes away without close: a gets b's partitions back promptly.
    drop(b);
    poll_until(&mut [&mut a], "a owns everything again", |cs| {
        set(cs[0]) == all
    })
    .await;
    assert_eq!(
        a_events.events().last(),
        Some(&Event::Assigned(moved.clone())),
        "a was told of the partitions it got back"
    );

    // Closing revokes everything.
    a.close().await.expect("close");
    assert_eq!(a_events.events().last(), Some(&Event::Revoked(all)));
    broker.stop().await;
}

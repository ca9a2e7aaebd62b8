//! Plugins as an operator meets them: chosen by flags or config, listed by
//! `ternd plugins list`, refused loudly at start-up, visible in `/metrics`,
//! and the cache plugin serving fetches.

use std::time::Duration;

use tern_client::{
    Admin, Client, Consumer, ConsumerConfig, NewTopic, Offset, Producer, ProducerConfig,
    ProducerRecord,
};
use tern_tests::{bin, metric_sum, run_ternd, Broker};

fn plugin_path(stem: &str) -> String {
    bin("ternd")
        .parent()
        .unwrap()
        .join(format!("lib{stem}{}", std::env::consts::DLL_SUFFIX))
        .display()
        .to_string()
}

#[test]
fn plugins_list_shows_bundled_plugins_and_refused_files() {
    let (ok, out, err) = run_ternd(&["plugins", "list"], Duration::from_secs(30));
    assert!(ok, "{err}");
    for line in [
        "cache      lru",
        "cache      s3-fifo",
        "balancer   sticky",
        "balancer   round-robin",
        "lock       exclusive",
        "lock       read-write",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("ABI version 999"), "{out}");
}

#[test]
fn ternd_refuses_to_start_with_a_wrong_or_broken_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    let (lru, bad_abi, failing) = (
        plugin_path("tern_cache_lru"),
        plugin_path("tern_test_plugin_bad_abi"),
        plugin_path("tern_test_plugin_failing_check"),
    );
    let cases = [
        (vec!["--lock-plugin", "lru"], "no lock plugin named \"lru\""),
        (
            vec!["--lock-plugin", &lru],
            "is a cache plugin, configured as the lock plugin",
        ),
        (vec!["--cache-plugin", &bad_abi], "ABI version 999"),
        (vec!["--cache-plugin", &failing], "self-check failed"),
        (
            vec!["--cache-plugin", "/nonexistent/libx.so"],
            "/nonexistent/libx.so: file not found",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec![
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        all.extend(args.iter().copied());
        let (ok, _, err) = run_ternd(&all, Duration::from_secs(30));
        assert!(!ok, "ternd started with {args:?}");
        assert!(
            err.contains(want),
            "for {args:?} expected {want:?} in:\n{err}"
        );
    }
}

/// A config file chooses the plugins; the cache plugin's effect shows in
/// the metrics: a tailing consumer is served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_cache_plugin_serves_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        "[plugins]\ncache = \"s3-fifo\"\nbalancer = \"round-robin\"\nlock = \"read-write\"\n",
    )
    .unwrap();
    let broker = Broker::start(
        &dir.path().join("n1"),
        &["--config", config.to_str().unwrap()],
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        Admin::new(client.clone())
            .create_topic("c", NewTopic::new(1))
            .await
            .unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                batch_bytes_max: 4096,
                ..Default::default()
            },
        );
        for i in 0..2_000 {
            producer
                .enqueue(ProducerRecord::new("c", format!("value-{i}")))
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer.assign_all("c", Offset::Earliest).await.unwrap();
        let mut n = 0;
        while n < 2_000 {
            for r in consumer.poll().await.unwrap() {
                assert_eq!(r.value.unwrap(), format!("value-{}", r.offset).as_bytes());
                n += 1;
            }
        }
    })
    .await
    .expect("bounded");
    let (_, m) = broker.http("/metrics").unwrap();
    assert_eq!(
        metric_sum(
            &m,
            "tern_plugin_info{abi=\"1\",kind=\"cache\",name=\"s3-fifo\""
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "tern_plugin_info{abi=\"1\",kind=\"lock\",name=\"read-write\""
        ),
        1.0
    );
    assert!(metric_sum(&m, "tern_read_cache_hits_total{strategy=\"s3-fifo\"}") > 0.0);
    // The plugin directory (beside ternd) holds these strategies as files:
    // a file wins over the built-in of the same name.
    assert!(
        broker.log().contains("libtern_cache_s3fifo"),
        "{}",
        broker.log()
    );
}

/// The README's first command builds only `ternd` (`cargo run -p ternd`),
/// not the plugin libraries: a lone `ternd` binary, in a directory with no
/// plugin beside it and no plugin directory configured, must start with
/// its default strategies (compiled in) and serve a produce and a fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_ternd_binary_starts_with_built_in_default_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("bin");
    std::fs::create_dir(&lone).unwrap();
    let program = lone.join("ternd");
    std::fs::copy(bin("ternd"), &program).unwrap();
    let mut broker = Broker::configure(&dir.path().join("n1"), &[]);
    broker.set_program(&program);
    broker.spawn();
    let log = broker.log();
    for kind in ["lock", "balancer", "cache"] {
        assert!(
            log.lines().any(|l| l.contains("loaded plugin")
                && l.contains(&format!("kind=\"{kind}\""))
                && l.contains("path=built-in")),
            "no built-in {kind} plugin in:\n{log}"
        );
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        let client = Client::connect(&broker.addr).await.unwrap();
        Admin::new(client.clone())
            .create_topic("lone", NewTopic::new(1))
            .await
            .unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let at = producer
            .send(ProducerRecord::new("lone", "first contact").with_key("k"))
            .await
            .unwrap();
        let mut consumer = Consumer::new(client, ConsumerConfig::default());
        consumer
            .seek("lone", at.partition, Offset::At(at.offset))
            .await
            .unwrap();
        let record = consumer.next_record().await.unwrap();
        assert_eq!(record.value.as_deref(), Some(&b"first contact"[..]));
    })
    .await
    .expect("bounded");
}

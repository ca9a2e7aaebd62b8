//! Every bundled plugin passes its kind's conformance suite through the real
//! ABI, and the host refuses every kind of broken plugin with a clear error.

use tern_plugin_conformance::*;
use tern_plugin_host::{CachePolicy, Plugin, PluginError, PluginKind};

const CACHES: [&str; 2] = ["lru", "s3-fifo"];
const BALANCERS: [&str; 2] = ["round-robin", "sticky"];
const LOCKS: [(&str, bool); 2] = [("exclusive", false), ("read-write", true)];

#[test]
fn every_cache_plugin_respects_its_byte_bound() {
    for name in CACHES {
        let p = bundled(PluginKind::Cache, name);
        for seed in 0..20 {
            check_cache(&p, 1_000, 5_000, seed).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn s3_fifo_keeps_the_hot_set_through_a_scan_where_lru_does_not() {
    let s3 = hot_hit_ratio_under_scan(&bundled(PluginKind::Cache, "s3-fifo"));
    let lru = hot_hit_ratio_under_scan(&bundled(PluginKind::Cache, "lru"));
    assert!(s3 > 0.9, "s3-fifo hot hit ratio {s3}");
    assert!(s3 > lru, "s3-fifo {s3} should beat lru {lru} under a scan");
}

#[test]
fn every_balancer_assigns_each_partition_once_and_balances_within_one() {
    for name in BALANCERS {
        check_balancer(&bundled(PluginKind::Balancer, name), 7)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn sticky_moves_only_what_the_new_member_must_take() {
    let sticky = moved_on_join(&bundled(PluginKind::Balancer, "sticky"), 3, 12);
    let rr = moved_on_join(&bundled(PluginKind::Balancer, "round-robin"), 3, 12);
    assert_eq!(
        sticky, 3,
        "12 partitions over 4 members: the newcomer takes 3"
    );
    assert!(rr > sticky, "round-robin moved {rr}");
}

#[test]
fn every_lock_plugin_is_mutually_exclusive_fenced_and_fair() {
    for (name, shared) in LOCKS {
        let p = bundled(PluginKind::Lock, name);
        for seed in 0..10 {
            check_lock(&p, shared, seed).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

fn test_plugin(name: &str) -> std::path::PathBuf {
    plugin_dir().join(format!(
        "libtern_test_plugin_{name}{}",
        std::env::consts::DLL_SUFFIX
    ))
}

#[test]
fn the_host_refuses_broken_plugins_naming_file_and_cause() {
    let err = Plugin::load(&plugin_dir().join("libnope.so"), PluginKind::Cache).unwrap_err();
    assert!(matches!(err, PluginError::Missing { .. }), "{err}");

    let dir = tempfile_dir();
    let text = dir.join("libtern_not_a_library.so");
    std::fs::write(&text, "this is text").unwrap();
    let err = Plugin::load(&text, PluginKind::Cache).unwrap_err();
    assert!(matches!(err, PluginError::NotLoadable { .. }), "{err}");
    assert!(err.to_string().contains("libtern_not_a_library.so"));

    let err = Plugin::load(&test_plugin("no_entry"), PluginKind::Cache).unwrap_err();
    assert!(matches!(err, PluginError::NoEntry { .. }), "{err}");

    let err = Plugin::load(&test_plugin("bad_abi"), PluginKind::Cache).unwrap_err();
    assert!(
        matches!(err, PluginError::AbiMismatch { found: 999, .. }),
        "{err}"
    );

    let err = Plugin::load(&test_plugin("wrong_target"), PluginKind::Cache).unwrap_err();
    assert!(matches!(err, PluginError::TargetMismatch { .. }), "{err}");
    assert!(err.to_string().contains("sparc64-sun-solaris"));

    let lru = bundled(PluginKind::Cache, "lru");
    let err = Plugin::load(&lru.info().path, PluginKind::Lock).unwrap_err();
    assert!(matches!(err, PluginError::KindMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("is a cache plugin, configured as the lock plugin"),
        "{err}"
    );

    let err = Plugin::load(&test_plugin("failing_check"), PluginKind::Cache).unwrap_err();
    assert!(
        matches!(err, PluginError::SelfCheckFailed { status: -1, .. }),
        "{err}"
    );

    let err = Plugin::resolve("no-such-strategy", PluginKind::Cache, &plugin_dir()).unwrap_err();
    assert!(matches!(err, PluginError::NotFound { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_panic_inside_a_plugin_call_becomes_an_error_not_an_abort() {
    let p = Plugin::load(&test_plugin("panicky_cache"), PluginKind::Cache).unwrap();
    let mut policy = CachePolicy::new(&p, 100).unwrap();
    assert!(policy.admit(1, 10).unwrap().0);
    let err = policy.admit(666, 10).unwrap_err();
    assert!(
        matches!(err, PluginError::Panicked { call: "admit", .. }),
        "{err}"
    );
    // And the plugin keeps working afterwards.
    assert!(policy.admit(2, 10).unwrap().0);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tern-plugin-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! Cost of a cache-policy call through the plugin ABI (libloading, C
//! function table, catch_unwind, caller-owned buffers) against the same
//! strategy linked directly. One "operation" is what the read cache does per
//! record batch: admit a new batch (evicting as needed) and record a hit.
//!
//!   cargo bench -p tern-plugin-conformance --bench abi_overhead

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tern_plugin_abi::CacheStrategy;
use tern_plugin_conformance::bundled;
use tern_plugin_host::{CachePolicy, PluginKind};

const CAPACITY: u64 = 64 << 20;
const BATCH: u64 = 100 * 1024;

fn direct<S: CacheStrategy>(c: &mut Criterion, label: &str) {
    let mut policy = S::new(CAPACITY);
    let mut evicted = Vec::new();
    let mut key = 0u64;
    c.bench_function(&format!("{label}/direct admit+hit"), |b| {
        b.iter(|| {
            key += 1;
            evicted.clear();
            black_box(policy.admit(key, BATCH, &mut evicted, 256));
            policy.on_hit(key.saturating_sub(100));
        })
    });
}

fn through_abi(c: &mut Criterion, name: &str) {
    let plugin = bundled(PluginKind::Cache, name);
    let mut policy = CachePolicy::new(&plugin, CAPACITY).expect("policy");
    let mut key = 0u64;
    let mut evicted = Vec::new();
    c.bench_function(&format!("{name}/abi admit+hit"), |b| {
        b.iter(|| {
            key += 1;
            evicted.clear();
            black_box(policy.admit_into(key, BATCH, &mut evicted).expect("admit"));
            policy.on_hit(key.saturating_sub(100)).expect("hit");
        })
    });
}

fn benches(c: &mut Criterion) {
    direct::<tern_strategies::cache_lru::Lru>(c, "lru");
    through_abi(c, "lru");
    direct::<tern_strategies::cache_s3fifo::S3Fifo>(c, "s3-fifo");
    through_abi(c, "s3-fifo");
}

criterion_group!(abi, benches);
criterion_main!(abi);

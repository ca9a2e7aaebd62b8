//! Conformance suite for Tern plugins, run against the built shared
//! libraries through the real ABI (`tern-plugin-host`), not against the Rust
//! types. Each `check_*` function states the contract of its kind; a plugin
//! conforms when its function returns `Ok`.
//!
//! - cache: the byte bound is never exceeded; evicted keys were resident;
//!   admitted keys are resident; the policy survives any sequence of calls.
//! - balancer: every partition is owned by exactly one current member;
//!   member loads differ by at most one; the same input gives the same output.
//! - lock: never two exclusive holders, never exclusive beside shared;
//!   fencing tokens of successive grants never decrease, and every exclusive
//!   hand-over strictly increases the token; waiters are granted in arrival
//!   order (no overtaking among exclusive requests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use tern_plugin_host::{
    Balancer, CachePolicy, LockMachine, Member, Plugin, PluginKind, LOCK_EXCLUSIVE, LOCK_SHARED,
    UNOWNED,
};

/// Directory holding the built plugins (`target/<profile>/`), found from the
/// running test executable.
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Loads a bundled plugin by kind and name from [`plugin_dir`].
pub fn bundled(kind: PluginKind, name: &str) -> Plugin {
    Plugin::resolve(name, kind, &plugin_dir()).unwrap_or_else(|e| {
        panic!("{e} (build the workspace first: cargo build --release --workspace)")
    })
}

/// Cache contract over `ops` random operations from `seed`.
pub fn check_cache(plugin: &Plugin, capacity: u64, ops: usize, seed: u64) -> Result<(), String> {
    let mut policy = CachePolicy::new(plugin, capacity).map_err(|e| e.to_string())?;
    let mut resident: HashMap<u64, u64> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for step in 0..ops {
        let key = rng.random_range(0..500u64);
        match rng.random_range(0..10) {
            0..=5 => {
                let size = rng.random_range(1..=capacity / 4 + 1);
                let (admitted, evicted) = policy.admit(key, size).map_err(|e| e.to_string())?;
                resident.remove(&key);
                for k in evicted {
                    if resident.remove(&k).is_none() {
                        return Err(format!(
                            "step {step}: evicted key {k} that was not resident"
                        ));
                    }
                }
                if admitted {
                    resident.insert(key, size);
                }
            }
            6..=8 => {
                if resident.contains_key(&key) {
                    policy.on_hit(key).map_err(|e| e.to_string())?;
                }
            }
            _ => {
                policy.remove(key).map_err(|e| e.to_string())?;
                resident.remove(&key);
            }
        }
        let used: u64 = resident.values().sum();
        if used > capacity {
            return Err(format!(
                "step {step}: {used} bytes resident, capacity {capacity}"
            ));
        }
    }
    Ok(())
}

/// Hit ratio of a hot set (keys re-read constantly) while a one-time scan of
/// cold keys streams through the cache: how scan-resistant a policy is.
pub fn hot_hit_ratio_under_scan(plugin: &Plugin) -> f64 {
    let mut policy = CachePolicy::new(plugin, 100 * 10).expect("policy");
    let mut resident: HashSet<u64> = HashSet::new();
    let (mut hits, mut reads) = (0u64, 0u64);
    let offer = |policy: &mut CachePolicy, resident: &mut HashSet<u64>, k: u64| {
        let (admitted, evicted) = policy.admit(k, 10).expect("admit");
        for e in evicted {
            resident.remove(&e);
        }
        if admitted {
            resident.insert(k);
        }
    };
    for round in 0..2_000u64 {
        for hot in 0..20u64 {
            reads += 1;
            if resident.contains(&hot) {
                hits += 1;
                policy.on_hit(hot).expect("hit");
            } else {
                offer(&mut policy, &mut resident, hot);
            }
        }
        // A scan of never-again-read batches.
        for cold in 0..100u64 {
            offer(&mut policy, &mut resident, 1_000_000 + round * 100 + cold);
        }
    }
    hits as f64 / reads as f64
}

/// Balancer contract for many member/partition shapes.
pub fn check_balancer(plugin: &Plugin, seed: u64) -> Result<(), String> {
    let balancer = Balancer::new(plugin);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..300 {
        let n = rng.random_range(1..12usize);
        let p = rng.random_range(0..64usize);
        let mut ids: Vec<u64> = (0..n).map(|_| rng.random_range(0..1_000)).collect();
        ids.sort();
        ids.dedup();
        let members: Vec<Member> = ids.iter().map(|&id| Member { id, weight: 1 }).collect();
        let current: Vec<u64> = (0..p)
            .map(|_| {
                if rng.random_bool(0.3) {
                    UNOWNED
                } else {
                    rng.random_range(0..1_000)
                }
            })
            .collect();
        let out = balancer
            .assign(&members, &current)
            .map_err(|e| e.to_string())?;
        if out
            != balancer
                .assign(&members, &current)
                .map_err(|e| e.to_string())?
        {
            return Err("not deterministic".into());
        }
        let mut load: BTreeMap<u64, usize> = ids.iter().map(|&id| (id, 0)).collect();
        for (i, o) in out.iter().enumerate() {
            match load.get_mut(o) {
                Some(l) => *l += 1,
                None => return Err(format!("partition {i} given to non-member {o}")),
            }
        }
        let (min, max) = (
            load.values().min().copied().unwrap_or(0),
            load.values().max().copied().unwrap_or(0),
        );
        if max - min > 1 {
            return Err(format!("unbalanced: loads {load:?}"));
        }
    }
    Ok(())
}

/// Partitions moved when a member joins a balanced group of `n`.
pub fn moved_on_join(plugin: &Plugin, n: u64, partitions: usize) -> usize {
    let b = Balancer::new(plugin);
    let before: Vec<Member> = (1..=n).map(|id| Member { id, weight: 1 }).collect();
    let a = b
        .assign(&before, &vec![UNOWNED; partitions])
        .expect("assign");
    let mut after = before.clone();
    after.push(Member {
        id: n + 1,
        weight: 1,
    });
    let c = b.assign(&after, &a).expect("assign");
    a.iter().zip(&c).filter(|(x, y)| x != y).count()
}

/// Lock contract over random acquire/release/expire sequences.
pub fn check_lock(plugin: &Plugin, shared_allowed: bool, seed: u64) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut lock = LockMachine::new(plugin).map_err(|e| e.to_string())?;
    let (mut now, mut token) = (0u64, 0u64);
    let mut last_token = 0u64;
    let mut last_exclusive_owner: Option<(u64, u64)> = None;
    let mut exclusive_queue: Vec<u64> = Vec::new();
    for step in 0..5_000 {
        now += rng.random_range(0..50);
        token += 1;
        let owner = rng.random_range(1..8u64);
        let grants = match rng.random_range(0..10) {
            0..=4 => {
                let mode = if shared_allowed && rng.random_bool(0.5) {
                    LOCK_SHARED
                } else {
                    LOCK_EXCLUSIVE
                };
                let holders = lock.holders().map_err(|e| e.to_string())?;
                // A holder whose lease ran out re-queues like anyone else.
                let already = holders
                    .iter()
                    .any(|h| h.owner == owner && h.expires_ms > now);
                let (_, g) = lock
                    .acquire(owner, mode, rng.random_range(10..200), now, token)
                    .map_err(|e| e.to_string())?;
                if mode == LOCK_EXCLUSIVE && !already && !exclusive_queue.contains(&owner) {
                    exclusive_queue.push(owner);
                }
                g
            }
            5..=8 => {
                exclusive_queue.retain(|o| *o != owner);
                lock.release(owner, now, token).map_err(|e| e.to_string())?
            }
            _ => lock.expire(now, token).map_err(|e| e.to_string())?,
        };
        for g in &grants {
            if g.token < last_token {
                return Err(format!(
                    "step {step}: token went back from {last_token} to {}",
                    g.token
                ));
            }
            last_token = g.token;
            if g.mode == LOCK_EXCLUSIVE {
                if let Some((prev_owner, prev_token)) = last_exclusive_owner {
                    if g.token <= prev_token && g.owner != prev_owner {
                        return Err(format!(
                            "step {step}: exclusive hand-over without a larger token"
                        ));
                    }
                }
                last_exclusive_owner = Some((g.owner, g.token));
                // Among exclusive waiters, the earliest still waiting wins.
                if !shared_allowed {
                    if let Some(pos) = exclusive_queue.iter().position(|o| *o == g.owner) {
                        if pos != 0 {
                            return Err(format!(
                                "step {step}: owner {} overtook {:?}",
                                g.owner,
                                &exclusive_queue[..pos]
                            ));
                        }
                    }
                }
                exclusive_queue.retain(|o| *o != g.owner);
            }
        }
        let holders = lock.holders().map_err(|e| e.to_string())?;
        let exclusive = holders.iter().filter(|h| h.mode == LOCK_EXCLUSIVE).count();
        if exclusive > 1 || (exclusive == 1 && holders.len() > 1) {
            return Err(format!("step {step}: incompatible holders {holders:?}"));
        }
        if !shared_allowed && holders.iter().any(|h| h.mode == LOCK_SHARED) {
            return Err(format!(
                "step {step}: shared grant from an exclusive-only lock"
            ));
        }
        // Holders' exclusive queue bookkeeping: a holder is no longer waiting.
        for h in &holders {
            exclusive_queue.retain(|o| *o != h.owner);
        }
    }
    Ok(())
}

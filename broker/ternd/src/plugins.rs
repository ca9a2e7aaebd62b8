//! Loading the configured strategy plugins at startup. The broker starts
//! with all three loaded and self-checked, or not at all.
//!
//! A plugin is named in config by path or by name. A name is looked up in
//! the plugin directory first, then among the strategies compiled into
//! `ternd` (`tern_strategies::BUILTINS`, the same code the bundled `.so`
//! files wrap, checked through the same descriptor). So a lone `ternd`
//! binary starts with its defaults, and dropping a library into the plugin
//! directory still replaces or adds a strategy at the next restart.

use std::path::{Path, PathBuf};

use tern_plugin_host::{Balancer, Grant, LockMachine, Member, Plugin, PluginError, PluginKind};
use tracing::info;

use crate::metrics::Metrics;

/// Default lock strategy.
pub const DEFAULT_LOCK_PLUGIN: &str = "exclusive";
/// Default balancer strategy.
pub const DEFAULT_BALANCER_PLUGIN: &str = "sticky";
/// Default cache strategy.
pub const DEFAULT_CACHE_PLUGIN: &str = "lru";

/// The loaded plugins.
#[derive(Clone, Debug)]
pub struct Plugins {
    /// Lock semantics (used by the coordination service).
    pub lock: Plugin,
    /// Consumer-group balancer.
    pub balancer: Balancer,
    /// Read-cache policy.
    pub cache: Plugin,
}

/// Where plugins are looked up when none is given: the directory of the
/// `ternd` executable if it holds plugins (where `cargo build --workspace`
/// puts the bundled ones), else `/usr/lib/tern/plugins` (where the container
/// image installs them). A missing directory is no error: names not found
/// there resolve to the built-in strategies.
pub fn default_plugin_dir() -> PathBuf {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    match beside_exe {
        Some(dir) if has_plugins(&dir) => dir,
        _ => PathBuf::from("/usr/lib/tern/plugins"),
    }
}

fn has_plugins(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.starts_with("libtern_") && n.ends_with(std::env::consts::DLL_SUFFIX)
            })
        })
    })
}

/// Loads the three plugins by name or path.
pub fn load(
    dir: &Path,
    lock: &str,
    balancer: &str,
    cache: &str,
    metrics: &Metrics,
) -> Result<Plugins, PluginError> {
    let lock =
        Plugin::resolve_with_builtins(lock, PluginKind::Lock, dir, &tern_strategies::BUILTINS)?;
    let balancer = Plugin::resolve_with_builtins(
        balancer,
        PluginKind::Balancer,
        dir,
        &tern_strategies::BUILTINS,
    )?;
    let cache =
        Plugin::resolve_with_builtins(cache, PluginKind::Cache, dir, &tern_strategies::BUILTINS)?;
    for p in [&lock, &balancer, &cache] {
        let i = p.info();
        info!(kind = i.kind.name(), name = %i.name, version = %i.version, abi = i.abi_version,
              path = %i.path.display(), "loaded plugin");
        metrics
            .plugin_info
            .with_label_values(&[
                i.kind.name(),
                &i.name,
                &i.version,
                &i.abi_version.to_string(),
            ])
            .set(1);
    }
    Ok(Plugins {
        lock,
        balancer: Balancer::new(&balancer),
        cache,
    })
}

impl Plugins {
    /// What the coordination state machine runs; all brokers of a cluster
    /// must agree on it (checked at registration and at add-broker).
    pub fn coordination_id(&self) -> String {
        format!(
            "lock={} balancer={}",
            self.lock.info().name,
            self.balancer.plugin().info().name
        )
    }

    /// The lock and balancer plugins as the coordination state machine
    /// calls them.
    pub fn coordination(&self) -> std::sync::Arc<dyn tern_raft::CoordPlugins> {
        std::sync::Arc::new(Coordination {
            lock: self.lock.clone(),
            balancer: self.balancer.clone(),
        })
    }
}

struct Coordination {
    lock: Plugin,
    balancer: Balancer,
}

struct PluginLock(LockMachine);

impl tern_raft::LockSemantics for PluginLock {
    fn acquire(
        &mut self,
        owner: u64,
        mode: u32,
        lease_ms: u64,
        now_ms: u64,
        token: u64,
    ) -> Result<bool, String> {
        self.0
            .acquire(owner, mode, lease_ms, now_ms, token)
            .map(|(held, _)| held)
            .map_err(|e| e.to_string())
    }

    fn release(&mut self, owner: u64, now_ms: u64, token: u64) -> Result<(), String> {
        self.0
            .release(owner, now_ms, token)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn expire(&mut self, now_ms: u64, token: u64) -> Result<(), String> {
        self.0
            .expire(now_ms, token)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn holders(&self) -> Result<Vec<Grant>, String> {
        self.0.holders().map_err(|e| e.to_string())
    }
}

impl tern_raft::CoordPlugins for Coordination {
    fn new_lock(&self) -> Result<Box<dyn tern_raft::LockSemantics>, String> {
        LockMachine::new(&self.lock)
            .map(|m| Box::new(PluginLock(m)) as Box<dyn tern_raft::LockSemantics>)
            .map_err(|e| e.to_string())
    }

    fn assign(&self, members: &[Member], current: &[u64]) -> Result<Vec<u64>, String> {
        self.balancer
            .assign(members, current)
            .map_err(|e| e.to_string())
    }
}

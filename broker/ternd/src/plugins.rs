//! Loading the configured strategy plugins at startup. The broker starts
//! with all three loaded and self-checked, or not at all.

use std::path::{Path, PathBuf};

use tern_plugin_host::{Balancer, Plugin, PluginError, PluginKind};
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
/// `ternd` executable (where cargo puts the bundled plugins), then
/// `/usr/lib/tern/plugins` (where the container image installs them).
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
    let lock = Plugin::resolve(lock, PluginKind::Lock, dir)?;
    let balancer = Plugin::resolve(balancer, PluginKind::Balancer, dir)?;
    let cache = Plugin::resolve(cache, PluginKind::Cache, dir)?;
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

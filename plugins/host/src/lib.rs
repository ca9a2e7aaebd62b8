//! The plugin host: finds, loads and checks strategy plugins, and wraps
//! their C function tables in safe Rust types.
//!
//! Loading a plugin checks, in this order, and refuses with a
//! [`PluginError`] naming the file and the cause: the file exists; it is a
//! loadable shared library; it exports the entry symbol; the ABI version
//! matches; the kind is known (and the one expected); the target triple
//! matches the host's; the descriptor's strings are valid; the plugin's own
//! self-check passes. Only then is a strategy instantiated.
//!
//! **Invariant:** no plugin function is called before its descriptor passed
//! every check, and every call's status is checked: a panic inside the
//! plugin comes back as [`PluginError::Panicked`], never as an unwind.

#![warn(missing_docs)]

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_plugin_abi as abi;
use thiserror::Error;

pub use abi::{Grant, Member, PluginKind, LOCK_EXCLUSIVE, LOCK_SHARED, UNOWNED};

/// Why a plugin was refused or failed.
#[derive(Debug, Error)]
pub enum PluginError {
    /// No file at the path.
    #[error("plugin {path}: file not found")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file is not a shared library the dynamic loader accepts.
    #[error("plugin {path}: not a loadable library: {reason}")]
    NotLoadable {
        /// The path.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library lacks the entry symbol.
    #[error("plugin {path}: entry symbol `tern_plugin_entry` missing: {reason}")]
    NoEntry {
        /// The path.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// Built against another ABI version.
    #[error("plugin {path}: ABI version {found}, this ternd speaks {expected}")]
    AbiMismatch {
        /// The path.
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The kind is unknown or not the one configured.
    #[error("plugin {path}: is a {found} plugin, configured as the {expected} plugin")]
    KindMismatch {
        /// The path.
        path: PathBuf,
        /// The plugin's kind.
        found: String,
        /// The expected kind.
        expected: String,
    },
    /// Built for another target.
    #[error("plugin {path}: built for target {found}, this ternd is {expected}")]
    TargetMismatch {
        /// The path.
        path: PathBuf,
        /// The plugin's target.
        found: String,
        /// Ours.
        expected: String,
    },
    /// The descriptor is malformed (null pointers, invalid strings).
    #[error("plugin {path}: malformed descriptor: {reason}")]
    BadDescriptor {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The plugin's self-check failed or panicked.
    #[error("plugin {path} ({name}): self-check failed with status {status}")]
    SelfCheckFailed {
        /// The path.
        path: PathBuf,
        /// Plugin name.
        name: String,
        /// The status returned.
        status: i32,
    },
    /// No plugin of that kind and name in the directory.
    #[error("no {kind} plugin named {name:?} in {dir} (built in: {builtin})")]
    NotFound {
        /// Kind wanted.
        kind: String,
        /// Name wanted.
        name: String,
        /// Directory searched.
        dir: PathBuf,
        /// The built-in strategies of that kind, comma-separated.
        builtin: String,
    },
    /// A call into the plugin panicked.
    #[error("plugin {name}: {call} panicked")]
    Panicked {
        /// Plugin name.
        name: String,
        /// Which call.
        call: &'static str,
    },
    /// A call into the plugin returned an error status.
    #[error("plugin {name}: {call} failed with status {status}")]
    CallFailed {
        /// Plugin name.
        name: String,
        /// Which call.
        call: &'static str,
        /// The status.
        status: i32,
    },
}

/// The `path` of a built-in plugin's [`PluginInfo`] (it has no file).
pub const BUILTIN_PATH: &str = "built-in";

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The file, or [`BUILTIN_PATH`] for a plugin compiled into the host.
    pub path: PathBuf,
    /// Its kind.
    pub kind: PluginKind,
    /// Strategy name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// ABI version.
    pub abi_version: u32,
    /// Target triple.
    pub target: String,
    /// ABI crate version it was built with.
    pub abi_crate_version: String,
}

/// A loaded, checked plugin. The library stays loaded while any clone lives.
#[derive(Clone)]
pub struct Plugin {
    /// `None` for a built-in: its code is part of the host binary.
    _library: Option<Arc<libloading::Library>>,
    descriptor: &'static abi::PluginDescriptor,
    info: PluginInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

// SAFETY: the descriptor is immutable static data of a library we keep
// loaded; the vtables are plain function pointers.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

impl Plugin {
    /// Loads and checks the plugin at `path` without running its self-check.
    pub fn inspect(path: &Path) -> Result<Plugin, PluginError> {
        let path_buf = path.to_path_buf();
        if !path.exists() {
            return Err(PluginError::Missing { path: path_buf });
        }
        // SAFETY: loading a library runs its initialisers; plugins are
        // operator-chosen files, which is the trust boundary of this design.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::NotLoadable {
                path: path_buf.clone(),
                reason: e.to_string(),
            })?;
        // SAFETY: the symbol's type is fixed by the ABI crate.
        let entry: abi::EntryFn = unsafe {
            *library
                .get::<abi::EntryFn>(abi::ENTRY_SYMBOL)
                .map_err(|e| PluginError::NoEntry {
                    path: path_buf.clone(),
                    reason: e.to_string(),
                })?
        };
        Self::from_entry(entry, path, Some(library))
    }

    /// A plugin compiled into the host, given its entry function: the same
    /// descriptor checks as for a file, without a library to load.
    pub fn builtin(entry: abi::EntryFn) -> Result<Plugin, PluginError> {
        Self::from_entry(entry, Path::new(BUILTIN_PATH), None)
    }

    /// Checks the descriptor `entry` returns (everything but the kind and
    /// the self-check, which [`Plugin::load`] adds).
    fn from_entry(
        entry: abi::EntryFn,
        path: &Path,
        library: Option<libloading::Library>,
    ) -> Result<Plugin, PluginError> {
        let path_buf = path.to_path_buf();
        // SAFETY: the entry function takes nothing and returns a pointer.
        let ptr = unsafe { entry() };
        if ptr.is_null() {
            return Err(PluginError::BadDescriptor {
                path: path_buf,
                reason: "entry returned null".into(),
            });
        }
        // SAFETY: `abi_version` and `kind` are the first fields in every ABI
        // version, so reading them is valid whatever the plugin's version.
        let (abi_version, raw_kind) = unsafe { ((*ptr).abi_version, (*ptr).kind) };
        if abi_version != abi::ABI_VERSION {
            return Err(PluginError::AbiMismatch {
                path: path_buf,
                found: abi_version,
                expected: abi::ABI_VERSION,
            });
        }
        // SAFETY: same ABI version: the whole descriptor has our layout and,
        // being static in a library we keep loaded (or in the host itself),
        // lives as long as `library`.
        let descriptor: &'static abi::PluginDescriptor = unsafe { &*ptr };
        let kind = PluginKind::from_u32(raw_kind).ok_or_else(|| PluginError::KindMismatch {
            path: path_buf.clone(),
            found: format!("unknown kind {raw_kind}"),
            expected: "lock, balancer or cache".into(),
        })?;
        let text = |s: &abi::StaticStr, field: &str| {
            // SAFETY: the plugin promises static UTF-8; we validate it.
            unsafe { s.as_str() }
                .map(str::to_owned)
                .ok_or_else(|| PluginError::BadDescriptor {
                    path: path_buf.clone(),
                    reason: format!("{field} is not valid UTF-8"),
                })
        };
        let info = PluginInfo {
            path: path_buf.clone(),
            kind,
            name: text(&descriptor.name, "name")?,
            version: text(&descriptor.version, "version")?,
            abi_version,
            target: text(&descriptor.target, "target")?,
            abi_crate_version: text(&descriptor.abi_crate_version, "abi crate version")?,
        };
        if info.target != abi::TARGET {
            return Err(PluginError::TargetMismatch {
                path: path_buf,
                found: info.target,
                expected: abi::TARGET.into(),
            });
        }
        if descriptor.vtable.is_null() {
            return Err(PluginError::BadDescriptor {
                path: path_buf,
                reason: "null function table".into(),
            });
        }
        Ok(Plugin {
            _library: library.map(Arc::new),
            descriptor,
            info,
        })
    }

    /// Loads the plugin at `path`, requires `kind`, and runs its self-check.
    pub fn load(path: &Path, kind: PluginKind) -> Result<Plugin, PluginError> {
        Self::inspect(path)?.checked(kind)
    }

    /// Requires `kind` and runs the plugin's self-check.
    fn checked(self, kind: PluginKind) -> Result<Plugin, PluginError> {
        if self.info.kind != kind {
            return Err(PluginError::KindMismatch {
                path: self.info.path.clone(),
                found: self.info.kind.name().into(),
                expected: kind.name().into(),
            });
        }
        let status = (self.descriptor.self_check)();
        if status != abi::STATUS_OK {
            return Err(PluginError::SelfCheckFailed {
                path: self.info.path.clone(),
                name: self.info.name.clone(),
                status,
            });
        }
        Ok(self)
    }

    /// Resolves `spec` — a path (contains `/` or ends in the library suffix)
    /// or a plugin name looked up in `dir` — and loads it as `kind`.
    pub fn resolve(spec: &str, kind: PluginKind, dir: &Path) -> Result<Plugin, PluginError> {
        Self::resolve_with_builtins(spec, kind, dir, &[])
    }

    /// Like [`Plugin::resolve`], and a name found in no file of `dir` is
    /// looked up among `builtins` (entry functions compiled into the host).
    /// A file in `dir` wins over a built-in of the same name, so an operator
    /// can replace a default strategy by dropping a library in the directory.
    pub fn resolve_with_builtins(
        spec: &str,
        kind: PluginKind,
        dir: &Path,
        builtins: &[abi::EntryFn],
    ) -> Result<Plugin, PluginError> {
        if spec.contains('/') || spec.ends_with(std::env::consts::DLL_SUFFIX) {
            return Self::load(Path::new(spec), kind);
        }
        for found in scan(dir).into_iter().flatten() {
            if found.kind == kind && found.name == spec {
                return Self::load(&found.path, kind);
            }
        }
        let mut builtin_names = Vec::new();
        for &entry in builtins {
            let plugin = Self::builtin(entry)?;
            if plugin.info.kind == kind {
                if plugin.info.name == spec {
                    return plugin.checked(kind);
                }
                builtin_names.push(plugin.info.name.clone());
            }
        }
        Err(PluginError::NotFound {
            kind: kind.name().into(),
            name: spec.into(),
            dir: dir.to_path_buf(),
            builtin: if builtin_names.is_empty() {
                "none".into()
            } else {
                builtin_names.join(", ")
            },
        })
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn check(&self, call: &'static str, status: i32) -> Result<i32, PluginError> {
        match status {
            abi::STATUS_PANIC => Err(PluginError::Panicked {
                name: self.info.name.clone(),
                call,
            }),
            s if s < 0 && s != abi::STATUS_BUFFER_FULL => Err(PluginError::CallFailed {
                name: self.info.name.clone(),
                call,
                status: s,
            }),
            s => Ok(s),
        }
    }
}

/// Every plugin-looking file (`*.so` / `*.dylib`) in `dir`, inspected.
/// Files that fail inspection are reported as errors, not skipped.
pub fn scan(dir: &Path) -> Vec<Result<PluginInfo, PluginError>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX) && n.contains("tern"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Plugin::inspect(&p).map(|pl| pl.info.clone()))
        .collect()
}

/// Most keys evicted per `admit` call before the host drains the buffer
/// (small: a batch-sized admission rarely evicts more than a few).
const EVICT_BATCH_KEYS: usize = 16;

/// A cache policy instance from a cache plugin. Not `Sync`: callers hold it
/// behind a mutex.
pub struct CachePolicy {
    plugin: Plugin,
    vtable: &'static abi::CacheVTable,
    state: *mut c_void,
}

// SAFETY: the policy state is only touched through `&mut self`.
unsafe impl Send for CachePolicy {}

impl CachePolicy {
    /// A policy for a cache of `capacity_bytes`.
    pub fn new(plugin: &Plugin, capacity_bytes: u64) -> Result<CachePolicy, PluginError> {
        assert_eq!(plugin.info.kind, PluginKind::Cache, "checked at load");
        // SAFETY: kind Cache means the vtable is a CacheVTable.
        let vtable = unsafe { &*(plugin.descriptor.vtable as *const abi::CacheVTable) };
        let state = (vtable.create)(capacity_bytes);
        if state.is_null() {
            return Err(PluginError::CallFailed {
                name: plugin.info.name.clone(),
                call: "create",
                status: abi::STATUS_INVALID,
            });
        }
        Ok(CachePolicy {
            plugin: plugin.clone(),
            vtable,
            state,
        })
    }

    /// Records a hit.
    pub fn on_hit(&mut self, key: u64) -> Result<(), PluginError> {
        self.plugin
            .check("on_hit", (self.vtable.on_hit)(self.state, key))
            .map(drop)
    }

    /// Offers a key; returns whether it was admitted and the keys to evict.
    pub fn admit(&mut self, key: u64, size: u64) -> Result<(bool, Vec<u64>), PluginError> {
        let mut evicted = Vec::new();
        let admitted = self.admit_into(key, size, &mut evicted)?;
        Ok((admitted, evicted))
    }

    /// Like [`Self::admit`], appending the keys to evict to `evicted` (a
    /// buffer the caller reuses, so the hot path does not allocate).
    pub fn admit_into(
        &mut self,
        key: u64,
        size: u64,
        evicted: &mut Vec<u64>,
    ) -> Result<bool, PluginError> {
        let mut buf = [0u64; EVICT_BATCH_KEYS];
        loop {
            let mut n = 0usize;
            let status =
                (self.vtable.admit)(self.state, key, size, buf.as_mut_ptr(), buf.len(), &mut n);
            let status = self.plugin.check("admit", status)?;
            evicted.extend_from_slice(&buf[..n.min(buf.len())]);
            match status {
                abi::STATUS_BUFFER_FULL => continue,
                s => return Ok(s == 1),
            }
        }
    }

    /// Forgets a key.
    pub fn remove(&mut self, key: u64) -> Result<(), PluginError> {
        self.plugin
            .check("remove", (self.vtable.remove)(self.state, key))
            .map(drop)
    }

    /// The plugin behind this policy.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

impl Drop for CachePolicy {
    fn drop(&mut self) {
        (self.vtable.destroy)(self.state);
    }
}

/// A balancer from a balancer plugin.
#[derive(Clone, Debug)]
pub struct Balancer {
    plugin: Plugin,
}

impl Balancer {
    /// Wraps a checked balancer plugin.
    pub fn new(plugin: &Plugin) -> Balancer {
        assert_eq!(plugin.info.kind, PluginKind::Balancer, "checked at load");
        Balancer {
            plugin: plugin.clone(),
        }
    }

    /// New owner of each partition given the members and current owners
    /// ([`UNOWNED`] for none).
    pub fn assign(&self, members: &[Member], current: &[u64]) -> Result<Vec<u64>, PluginError> {
        // SAFETY: kind Balancer means the vtable is a BalancerVTable.
        let vtable = unsafe { &*(self.plugin.descriptor.vtable as *const abi::BalancerVTable) };
        let mut out = vec![UNOWNED; current.len()];
        let status = (vtable.assign)(
            members.as_ptr(),
            members.len(),
            current.as_ptr(),
            current.len(),
            out.as_mut_ptr(),
        );
        self.plugin.check("assign", status)?;
        Ok(out)
    }

    /// The plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

/// Most grants one lock event may produce before it is an error.
const GRANT_BUFFER: usize = abi::GRANTS_MAX;

/// One named lock's state machine from a lock plugin.
pub struct LockMachine {
    plugin: Plugin,
    vtable: &'static abi::LockVTable,
    state: *mut c_void,
}

// SAFETY: state only touched through `&mut self`.
unsafe impl Send for LockMachine {}

impl LockMachine {
    /// A free lock.
    pub fn new(plugin: &Plugin) -> Result<LockMachine, PluginError> {
        assert_eq!(plugin.info.kind, PluginKind::Lock, "checked at load");
        // SAFETY: kind Lock means the vtable is a LockVTable.
        let vtable = unsafe { &*(plugin.descriptor.vtable as *const abi::LockVTable) };
        let state = (vtable.create)();
        if state.is_null() {
            return Err(PluginError::CallFailed {
                name: plugin.info.name.clone(),
                call: "create",
                status: abi::STATUS_INVALID,
            });
        }
        Ok(LockMachine {
            plugin: plugin.clone(),
            vtable,
            state,
        })
    }

    fn grants(
        &self,
        call: &'static str,
        f: impl FnOnce(*mut Grant, usize, *mut usize) -> i32,
    ) -> Result<(i32, Vec<Grant>), PluginError> {
        let mut buf = vec![Grant::default(); GRANT_BUFFER];
        let mut n = 0usize;
        let status = self
            .plugin
            .check(call, f(buf.as_mut_ptr(), buf.len(), &mut n))?;
        if status == abi::STATUS_BUFFER_FULL {
            return Err(PluginError::CallFailed {
                name: self.plugin.info.name.clone(),
                call,
                status,
            });
        }
        buf.truncate(n.min(GRANT_BUFFER));
        Ok((status, buf))
    }

    /// `owner` asks for the lock; returns whether it holds it, and new grants.
    pub fn acquire(
        &mut self,
        owner: u64,
        mode: u32,
        lease_ms: u64,
        now_ms: u64,
        token: u64,
    ) -> Result<(bool, Vec<Grant>), PluginError> {
        let (s, st) = (self.vtable.acquire, self.state);
        let (status, g) = self.grants("acquire", |o, c, n| {
            s(st, owner, mode, lease_ms, now_ms, token, o, c, n)
        })?;
        Ok((status == 1, g))
    }

    /// `owner` releases or stops waiting; returns new grants.
    pub fn release(
        &mut self,
        owner: u64,
        now_ms: u64,
        token: u64,
    ) -> Result<Vec<Grant>, PluginError> {
        let (s, st) = (self.vtable.release, self.state);
        Ok(self
            .grants("release", |o, c, n| s(st, owner, now_ms, token, o, c, n))?
            .1)
    }

    /// Expires leases at `now_ms`; returns new grants.
    pub fn expire(&mut self, now_ms: u64, token: u64) -> Result<Vec<Grant>, PluginError> {
        let (s, st) = (self.vtable.expire, self.state);
        Ok(self
            .grants("expire", |o, c, n| s(st, now_ms, token, o, c, n))?
            .1)
    }

    /// Current holders.
    pub fn holders(&self) -> Result<Vec<Grant>, PluginError> {
        let (s, st) = (self.vtable.holders, self.state);
        Ok(self.grants("holders", |o, c, n| s(st, o, c, n))?.1)
    }
}

impl Drop for LockMachine {
    fn drop(&mut self) {
        (self.vtable.destroy)(self.state);
    }
}

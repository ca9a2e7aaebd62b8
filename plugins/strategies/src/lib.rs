//! The default strategies of every plugin kind, written against the plugin
//! ABI but exporting no symbol.
//!
//! Each module defines one strategy with the ABI's `define_*_plugin!` macro,
//! which yields a `plugin_entry` function returning the strategy's
//! descriptor. Two consumers use them, through the *same* descriptor and the
//! same host checks (ABI version, kind, target, self-check):
//! - `ternd` links this crate and offers every strategy as a **built-in**
//!   ([`BUILTINS`]), so a lone `ternd` binary starts with its defaults and no
//!   plugin directory;
//! - the `plugins/<kind>-<name>` crates wrap one strategy each into a
//!   `cdylib` with `export_plugin_entry!`, for loading from a directory like
//!   any third-party plugin.
//!
//! **Invariant: nothing here exports a `#[no_mangle]` symbol** — a binary
//! that links all strategies must not see six definitions of
//! `tern_plugin_entry`.

#![warn(missing_docs)]

pub mod balancer_round_robin;
pub mod balancer_sticky;
pub mod cache_lru;
pub mod cache_s3fifo;
pub mod lock_exclusive;
pub mod lock_read_write;

use tern_plugin_abi::EntryFn;

/// Every strategy's entry function, for a host to offer as built-ins.
pub const BUILTINS: [EntryFn; 6] = [
    lock_exclusive::plugin_entry,
    lock_read_write::plugin_entry,
    balancer_sticky::plugin_entry,
    balancer_round_robin::plugin_entry,
    cache_lru::plugin_entry,
    cache_s3fifo::plugin_entry,
];

//! The `read-write` strategy (see `tern_strategies::lock_read_write`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::lock_read_write::plugin_entry);

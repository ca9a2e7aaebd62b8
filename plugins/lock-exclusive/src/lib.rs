//! The `exclusive` strategy (see `tern_strategies::lock_exclusive`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::lock_exclusive::plugin_entry);

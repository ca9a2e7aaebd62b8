//! The `lru` strategy (see `tern_strategies::cache_lru`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::cache_lru::plugin_entry);

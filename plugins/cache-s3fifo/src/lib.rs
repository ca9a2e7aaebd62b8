//! The `s3-fifo` strategy (see `tern_strategies::cache_s3fifo`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::cache_s3fifo::plugin_entry);

//! The `sticky` strategy (see `tern_strategies::balancer_sticky`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::balancer_sticky::plugin_entry);

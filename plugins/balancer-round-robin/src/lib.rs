//! The `round-robin` strategy (see `tern_strategies::balancer_round_robin`) as a
//! loadable plugin: a shared library exporting its entry symbol.

tern_plugin_abi::export_plugin_entry!(tern_strategies::balancer_round_robin::plugin_entry);

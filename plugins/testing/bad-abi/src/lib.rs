//! A plugin claiming ABI version 999: the host must refuse it unread.
use tern_plugin_abi::{PluginDescriptor, StaticStr};

extern "C" fn ok() -> i32 {
    0
}

static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
    abi_version: 999,
    kind: 3,
    name: StaticStr::new("future"),
    version: StaticStr::new("9.9.9"),
    target: StaticStr::new(tern_plugin_abi::TARGET),
    abi_crate_version: StaticStr::new("9.9.9"),
    self_check: ok,
    vtable: std::ptr::null(),
};

#[no_mangle]
pub extern "C" fn tern_plugin_entry() -> *const PluginDescriptor {
    &DESCRIPTOR
}

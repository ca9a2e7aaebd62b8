//! A plugin claiming another target triple: the host must refuse it.
use tern_plugin_abi::{PluginDescriptor, StaticStr, ABI_VERSION};

extern "C" fn ok() -> i32 {
    0
}

static DESCRIPTOR: PluginDescriptor = PluginDescriptor {
    abi_version: ABI_VERSION,
    kind: 3,
    name: StaticStr::new("elsewhere"),
    version: StaticStr::new("0.1.0"),
    target: StaticStr::new("sparc64-sun-solaris"),
    abi_crate_version: StaticStr::new(tern_plugin_abi::ABI_CRATE_VERSION),
    self_check: ok,
    vtable: std::ptr::null(),
};

#[no_mangle]
pub extern "C" fn tern_plugin_entry() -> *const PluginDescriptor {
    &DESCRIPTOR
}

//! A cache plugin that loads fine but panics when offered key 666: the host
//! must turn that into an error, never an abort.
use tern_plugin_abi::{export_cache_plugin, Admission, CacheStrategy};

pub struct Panicky;

impl CacheStrategy for Panicky {
    fn new(_: u64) -> Self {
        Panicky
    }
    fn on_hit(&mut self, _: u64) {}
    fn admit(&mut self, key: u64, _: u64, _: &mut Vec<u64>, _: usize) -> Admission {
        assert_ne!(key, 666, "deliberate panic inside a plugin call");
        Admission::Admitted
    }
    fn remove(&mut self, _: u64) {}
}

fn self_check() -> bool {
    true
}

export_cache_plugin!(Panicky, "panicky", self_check);

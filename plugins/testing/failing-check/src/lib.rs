//! A cache plugin whose self-check panics: the host must refuse it, and the
//! panic must not cross the boundary.
use tern_plugin_abi::{export_cache_plugin, Admission, CacheStrategy};

pub struct Broken;

impl CacheStrategy for Broken {
    fn new(_: u64) -> Self {
        Broken
    }
    fn on_hit(&mut self, _: u64) {}
    fn admit(&mut self, _: u64, _: u64, _: &mut Vec<u64>, _: usize) -> Admission {
        Admission::Rejected
    }
    fn remove(&mut self, _: u64) {}
}

fn self_check() -> bool {
    panic!("deliberately broken self-check")
}

export_cache_plugin!(Broken, "failing-check", self_check);
